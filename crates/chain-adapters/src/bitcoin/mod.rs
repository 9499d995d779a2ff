//! Bitcoin adapter: Bitcoin Core JSON-RPC through `bitcoincore-rpc`.
//!
//! [`BitcoinSource`] follows the best chain from a durable cursor `(height, hash)`.
//! It processes a block only once it is `confirmations` deep, so a deposit whose block
//! is reorged out before that depth is never seen. Each processed block is checked to
//! extend the cursor by hash; processed blocks are remembered (a bounded window) with
//! what they reported and what they did to the vault's UTXO set, so that a reorg
//! deeper than the configured depth is rewound exactly and every event it undid is
//! surfaced as [`ChainEvent::Reorged`]. Deposits of a transaction whose vault outputs
//! together reach a tier wait, held in the checkpoint, until they reach its deeper depth
//! (tiers apply per transaction, see [`ConfirmationTier`]).
//!
//! A rejected vault payment (bad, missing or multiple memos, below the minimum) is
//! reported with [`Rejected::refund_to`]: the scriptPubKey of the prevout of its
//! transaction's first input, read with `getblock <hash> 3` only for blocks that have a
//! rejection. The node may refund it there, which pays out of the vault, so a rejection
//! that has a `refund_to` is held for its transaction's tier like a valid deposit; one
//! without (a coinbase first input) is reported at the base depth. Failing to read the
//! prevouts fails the poll before the block counts as processed: it is retried whole.
//!
//! `bitcoincore-rpc` is blocking: every call runs on tokio's blocking pool.
//! The node needs `-txindex=1` for [`BitcoinSource::tx_confirmations`] on confirmed
//! transactions that do not touch the vault, and Bitcoin Core 23 or later (`getblock`
//! verbosity 3) with its blocks' undo data for the prevouts of rejected payments.

mod config;
mod error;
pub mod mempool;
pub mod scan;

pub use config::{BitcoinConfig, ConfirmationTier, FeeBounds};
pub use error::BtcError;
pub use mempool::MempoolVerdict;
pub use scan::{RejectReason, VaultUtxo};

use crate::{
    AdapterError, BlockRef, ChainEvent, ChainHeads, ChainSource, Checkpoint, Inclusion, Observed, PollOutcome,
    Rejected, VaultSpend,
};
use async_trait::async_trait;
use bitcoin::{Address, Block, BlockHash, OutPoint, ScriptBuf, Transaction, Txid, hashes::Hash};
use bitcoincore_rpc::{Auth, Client, RpcApi};
use btcfi_types::{Attestation, AttestationKind, ChainId, EventId, Sats, TxHash};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    str::FromStr,
    sync::Arc,
};
use tracing::{debug, info, warn};

/// A processed block, remembered for rewinding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct BlockRecord {
    block: BlockRef,
    reported: Vec<EventId>,
    created: Vec<VaultUtxo>,
    spent: Vec<VaultUtxo>,
}

/// A payment waiting for its tier's deeper confirmation depth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "HeldRepr", into = "HeldRepr")]
struct Held {
    event: HeldEvent,
    confirmations: u32,
}

/// What a held payment reports once deep enough.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HeldEvent {
    /// A valid deposit.
    Observed(Observed),
    /// A rejected payment with a [`Rejected::refund_to`]: a refund pays out of the
    /// vault, so a shallow reorg must not be able to take the payment back after it.
    Rejected(Rejected),
}

impl Held {
    fn id(&self) -> EventId {
        match &self.event {
            HeldEvent::Observed(o) => o.attestation.event,
            HeldEvent::Rejected(r) => r.id,
        }
    }

    fn block(&self) -> BlockRef {
        match &self.event {
            HeldEvent::Observed(o) => o.block,
            HeldEvent::Rejected(r) => r.block,
        }
    }

    fn into_event(self) -> ChainEvent {
        match self.event {
            HeldEvent::Observed(o) => ChainEvent::Observed(o),
            HeldEvent::Rejected(r) => ChainEvent::Rejected(r),
        }
    }
}

/// How a [`Held`] is persisted. States written before rejected payments could be held
/// have only `observed`, and a held deposit is still written that way. A held rejection
/// is written without `observed`, so that a binary predating it refuses the checkpoint
/// (a missing field) rather than read the rejection as a deposit to attest.
#[derive(Serialize, Deserialize)]
struct HeldRepr {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    observed: Option<Observed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rejected: Option<Rejected>,
    confirmations: u32,
}

impl TryFrom<HeldRepr> for Held {
    type Error = &'static str;

    fn try_from(r: HeldRepr) -> Result<Self, Self::Error> {
        let event = match (r.observed, r.rejected) {
            (Some(o), None) => HeldEvent::Observed(o),
            (None, Some(rej)) => HeldEvent::Rejected(rej),
            _ => return Err("a held payment needs exactly one of `observed` and `rejected`"),
        };
        Ok(Held { event, confirmations: r.confirmations })
    }
}

impl From<Held> for HeldRepr {
    fn from(h: Held) -> Self {
        let (observed, rejected) = match h.event {
            HeldEvent::Observed(o) => (Some(o), None),
            HeldEvent::Rejected(r) => (None, Some(r)),
        };
        HeldRepr { observed, rejected, confirmations: h.confirmations }
    }
}

/// Adapter state persisted in [`Checkpoint::state`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    window: VecDeque<BlockRecord>,
    held: Vec<Held>,
    utxos: BTreeMap<OutPoint, VaultUtxo>,
    /// True once the window dropped its oldest block: rewinding past the window's
    /// bottom would then lose UTXO history, so it fails closed.
    #[serde(default)]
    trimmed: bool,
}

/// Where a fee-rate estimate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeeSource {
    /// `estimatesmartfee`, clamped to the configured bounds.
    Estimate,
    /// No estimate available (young chain, regtest): the configured floor.
    Floor,
}

/// A fee rate for releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeeRate {
    pub sat_per_vb: u64,
    pub source: FeeSource,
}

/// Block hash in display order, as a [`BlockRef`] carries it.
fn display_hash(h: &BlockHash) -> [u8; 32] {
    let mut b = h.to_byte_array();
    b.reverse();
    b
}

fn block_hash_from_display(b: &[u8; 32]) -> BlockHash {
    let mut internal = *b;
    internal.reverse();
    BlockHash::from_byte_array(internal)
}

/// What becomes of one payment to the vault in a processed block.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    /// Reported now: a payment whose transaction needs no more than the base depth, or
    /// a rejected one with nowhere to refund it.
    Report(ChainEvent),
    /// A valid deposit, or a refundable rejected one, held until its tier's deeper depth.
    Hold(Held),
}

/// Decides, for each payment of a block (in block order), whether it is reported now or
/// held for a deeper tier, and where a rejected one would be refunded: `refund_to` maps
/// a transaction (display order) to the scriptPubKey of its first input's prevout
/// ([`BtcRpc::first_input_scripts`]). Pure: unit-tested without a node.
///
/// **Tiers apply per transaction.** A valid deposit waits for the tier of everything its
/// transaction paid the vault ([`scan::paid_per_tx`]: valid and rejected outputs alike;
/// never the vault's own change, which is not a payment), not of its own output: ten
/// outputs of 4.9 BTC in one transaction wait like one of 49 BTC. Splitting a payment
/// over several transactions is not caught here; a future governor will add per-window
/// inflow/outflow limits (sats over windows of Bitcoin blocks) on top of the tiers.
///
/// A rejected payment with a `refund_to` waits for its transaction's tier too: the node
/// may refund it, and a refund pays out of the vault, so a reorg shallower than the tier
/// must not be able to take the payment back after the refund. A rejected payment with
/// no `refund_to` (a coinbase first input, or no prevout from the node) can be neither
/// attested nor refunded: it is reported at the base depth, for operators.
fn route_payments(
    cfg: &BitcoinConfig,
    payments: Vec<scan::VaultPayment>,
    block: BlockRef,
    refund_to: &BTreeMap<TxHash, Vec<u8>>,
) -> Vec<Route> {
    let totals = scan::paid_per_tx(&payments);
    payments
        .into_iter()
        .map(|p| {
            let id = EventId::new(ChainId::BITCOIN, p.txid, p.vout);
            // A payment is always in its own transaction's total; the fallback (its own
            // amount) only keeps this panic-free.
            let total = totals.get(&p.txid).copied().unwrap_or(p.amount);
            let confirmations = cfg.confirmations_for(total);
            let deeper = confirmations > cfg.confirmations;
            match p.memo {
                Ok(memo) => {
                    let attestation = Attestation {
                        event: id,
                        kind: AttestationKind::PegIn {
                            dest_chain: memo.dest_chain,
                            recipient: memo.recipient,
                            amount: p.amount,
                        },
                    };
                    let observed = Observed { attestation, block };
                    if deeper {
                        Route::Hold(Held { event: HeldEvent::Observed(observed), confirmations })
                    } else {
                        Route::Report(ChainEvent::Observed(observed))
                    }
                }
                Err(reason) => {
                    let rejected = Rejected {
                        id,
                        block,
                        amount: Some(p.amount),
                        reason: reason.to_string(),
                        refund_to: refund_to.get(&p.txid).cloned(),
                        refund: None,
                    };
                    if deeper && rejected.refund_to.is_some() {
                        Route::Hold(Held { event: HeldEvent::Rejected(rejected), confirmations })
                    } else {
                        Route::Report(ChainEvent::Rejected(rejected))
                    }
                }
            }
        })
        .collect()
}

/// Reads, from a `getblock <hash> 3` answer, the scriptPubKey of the prevout of the first
/// input of each transaction in `wanted` (display order). A first input without a
/// prevout (a coinbase, or a node without the block's undo data) gives no entry: there is
/// then nowhere to refund to. Anything else not shaped as bitcoind documents it, and a
/// wanted transaction that the answer lacks, is [`BtcError::BadResponse`]: the block was
/// already decoded by hash, so its verbose form must hold the same transactions.
fn parse_first_input_scripts(
    v: &Value,
    hash: &BlockHash,
    wanted: &BTreeSet<TxHash>,
) -> Result<BTreeMap<TxHash, Vec<u8>>, BtcError> {
    let bad = |detail: String| BtcError::BadResponse { method: "getblock", detail };
    let answered = v.get("hash").and_then(Value::as_str);
    if answered != Some(hash.to_string().as_str()) {
        return Err(bad(format!("verbose block for {hash} has hash {answered:?}")));
    }
    let txs =
        v.get("tx").and_then(Value::as_array).ok_or_else(|| bad(format!("no tx array in verbose block {hash}")))?;
    let mut scripts = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for tx in txs {
        let txid = tx
            .get("txid")
            .and_then(Value::as_str)
            .and_then(|s| Txid::from_str(s).ok())
            .map(|t| scan::display_txid(&t))
            .ok_or_else(|| bad(format!("a transaction of verbose block {hash} has no valid txid")))?;
        if !wanted.contains(&txid) {
            continue;
        }
        seen.insert(txid);
        let first = tx
            .get("vin")
            .and_then(Value::as_array)
            .and_then(|vin| vin.first())
            .ok_or_else(|| bad(format!("transaction {txid} of verbose block {hash} has no inputs")))?;
        let Some(prevout) = first.get("prevout").filter(|p| !p.is_null()) else { continue };
        let script = prevout
            .get("scriptPubKey")
            .and_then(|s| s.get("hex"))
            .and_then(Value::as_str)
            .and_then(|h| hex::decode(h).ok())
            .ok_or_else(|| bad(format!("first input of {txid} in block {hash}: no hex scriptPubKey in {prevout}")))?;
        scripts.insert(txid, script);
    }
    if let Some(missing) = wanted.iter().find(|t| !seen.contains(*t)) {
        return Err(bad(format!("transaction {missing} missing from verbose block {hash}")));
    }
    Ok(scripts)
}

/// A thin async wrapper over the blocking client.
#[derive(Debug, Clone)]
pub struct BtcRpc {
    client: Arc<Client>,
    url: String,
}

impl BtcRpc {
    pub fn new(cfg: &BitcoinConfig) -> Result<Self, BtcError> {
        let auth = match (&cfg.rpc_cookie_file, &cfg.rpc_user, &cfg.rpc_password) {
            (Some(cookie), _, _) => Auth::CookieFile(cookie.clone()),
            (None, Some(u), Some(p)) => Auth::UserPass(u.clone(), p.clone()),
            _ => Auth::None,
        };
        let client = Client::new(&cfg.rpc_url, auth).map_err(|e| BtcError::Config(format!("bitcoin.rpc_url: {e}")))?;
        Ok(Self { client: Arc::new(client), url: cfg.rpc_url.clone() })
    }

    /// Runs one blocking call on the blocking pool, mapping errors to [`BtcError`].
    pub async fn call<T, F>(&self, method: &'static str, f: F) -> Result<T, BtcError>
    where
        T: Send + 'static,
        F: FnOnce(&Client) -> Result<T, bitcoincore_rpc::Error> + Send + 'static,
    {
        let client = self.client.clone();
        let url = self.url.clone();
        tokio::task::spawn_blocking(move || f(&client).map_err(|e| BtcError::from_rpc(&url, method, e)))
            .await
            .map_err(|_| BtcError::Cancelled)?
    }

    pub async fn tip(&self) -> Result<u64, BtcError> {
        self.call("getblockcount", |c| c.get_block_count()).await
    }

    /// Hash of the best-chain block at `height`, or `None` above the tip.
    pub async fn hash_at(&self, height: u64) -> Result<Option<BlockHash>, BtcError> {
        match self.call("getblockhash", move |c| c.get_block_hash(height)).await {
            Ok(h) => Ok(Some(h)),
            // -8: "Block height out of range"
            Err(BtcError::Rpc { code: Some(-8), .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn block(&self, hash: BlockHash) -> Result<Block, BtcError> {
        self.call("getblock", move |c| c.get_block(&hash)).await
    }

    /// The scriptPubKey of the prevout of the first input of each transaction of block
    /// `hash` in `wanted` (see [`parse_first_input_scripts`]). One `getblock <hash> 3`:
    /// much heavier than the raw block, so only asked for blocks with a rejected payment.
    async fn first_input_scripts(
        &self,
        hash: BlockHash,
        wanted: &BTreeSet<TxHash>,
    ) -> Result<BTreeMap<TxHash, Vec<u8>>, BtcError> {
        let v: Value =
            self.call("getblock", move |c| c.call::<Value>("getblock", &[json!(hash.to_string()), json!(3)])).await?;
        parse_first_input_scripts(&v, &hash, wanted)
    }

    /// Confirmations of a block: `None` when it is not in the best chain.
    pub async fn block_confirmations(&self, hash: BlockHash) -> Result<Option<u64>, BtcError> {
        let v: serde_json::Value = self
            .call("getblockheader", move |c| {
                c.call("getblockheader", &[serde_json::json!(hash.to_string()), true.into()])
            })
            .await?;
        let conf = v.get("confirmations").and_then(serde_json::Value::as_i64).ok_or_else(|| BtcError::BadResponse {
            method: "getblockheader",
            detail: format!("no integer confirmations in {v}"),
        })?;
        Ok(u64::try_from(conf).ok().filter(|c| *c > 0))
    }
}

/// Follows Bitcoin and reports vault deposits at depth.
#[derive(Debug)]
pub struct BitcoinSource {
    cfg: BitcoinConfig,
    rpc: BtcRpc,
    vault: ScriptBuf,
    cursor: BlockRef,
    state: State,
    /// Failed prevout look-ups (`getblock` verbosity 3) of the next block in a row.
    prevout_failures: u32,
}

/// After this many failed prevout look-ups of one block in a row, the block is
/// processed without refund scripts (its rejections are not refunded by this node's
/// vote), rather than stopping the adapter for good.
const MAX_PREVOUT_FAILURES: u32 = 5;

impl BitcoinSource {
    /// Builds the adapter from its config and the last persisted checkpoint. Without a
    /// checkpoint, scanning starts at `start_height` (the cursor is the block below it,
    /// read from the node).
    pub async fn new(cfg: BitcoinConfig, checkpoint: Option<Checkpoint>) -> Result<Self, BtcError> {
        cfg.validate().map_err(|e| BtcError::Config(e.join("; ")))?;
        let vault = Address::from_str(&cfg.vault_address)
            .map_err(|e| BtcError::Config(format!("bitcoin.vault_address: {e}")))?
            .require_network(cfg.network)
            .map_err(|e| BtcError::Config(format!("bitcoin.vault_address: {e}")))?
            .script_pubkey();
        let rpc = BtcRpc::new(&cfg)?;
        let (cursor, state) = match checkpoint {
            Some(cp) => {
                let state = if cp.state.is_empty() {
                    State::default()
                } else {
                    serde_json::from_slice(&cp.state).map_err(|e| BtcError::Checkpoint(e.to_string()))?
                };
                (cp.cursor, state)
            }
            None => {
                let below = cfg.start_height.saturating_sub(1);
                let hash = rpc.hash_at(below).await?.ok_or_else(|| {
                    BtcError::Config(format!("bitcoin.start_height {} is above the node's tip", cfg.start_height))
                })?;
                (BlockRef { height: below, hash: display_hash(&hash) }, State::default())
            }
        };
        Ok(Self { cfg, rpc, vault, cursor, state, prevout_failures: 0 })
    }

    /// An instance that never scans: for fee estimates, broadcasts and following
    /// transactions (the release path) beside the polling one.
    pub fn for_submission(cfg: BitcoinConfig) -> Result<Self, BtcError> {
        let vault = Address::from_str(&cfg.vault_address)
            .map_err(|e| BtcError::Config(format!("bitcoin.vault_address: {e}")))?
            .require_network(cfg.network)
            .map_err(|e| BtcError::Config(format!("bitcoin.vault_address: {e}")))?
            .script_pubkey();
        let rpc = BtcRpc::new(&cfg)?;
        Ok(Self {
            cfg,
            rpc,
            vault,
            cursor: BlockRef { height: 0, hash: [0; 32] },
            state: State::default(),
            prevout_failures: 0,
        })
    }

    /// The vault's script (P2TR output).
    pub fn vault_script(&self) -> &ScriptBuf {
        &self.vault
    }

    pub fn rpc(&self) -> &BtcRpc {
        &self.rpc
    }
    pub fn config(&self) -> &BitcoinConfig {
        &self.cfg
    }

    /// The checkpoint to persist: cursor plus window, held deposits and UTXO set.
    pub fn checkpoint(&self) -> Result<Checkpoint, BtcError> {
        let state = serde_json::to_vec(&self.state).map_err(|e| BtcError::Checkpoint(e.to_string()))?;
        Ok(Checkpoint { cursor: self.cursor, state })
    }

    /// The vault's UTXOs as of the cursor (final blocks only).
    pub fn vault_utxos(&self) -> Vec<VaultUtxo> {
        self.state.utxos.values().copied().collect()
    }

    pub fn vault_balance(&self) -> Sats {
        Sats(self.state.utxos.values().map(|u| u.amount.0).sum())
    }

    /// Rewinds processed blocks that left the best chain. Returns the `Reorged` events.
    async fn rewind(&mut self, events: &mut Vec<ChainEvent>) -> Result<(), BtcError> {
        loop {
            let canonical = self.rpc.hash_at(self.cursor.height).await?;
            if canonical.map(|h| display_hash(&h)) == Some(self.cursor.hash) {
                return Ok(());
            }
            let parent_of = match self.state.window.pop_back() {
                Some(rec) if rec.block == self.cursor => {
                    warn!(target: "chain::btc", height = rec.block.height, reported = rec.reported.len(), "processed block left the best chain: rewinding");
                    scan::undo_block(&rec.created, &rec.spent, &mut self.state.utxos);
                    for id in rec.reported {
                        events.push(ChainEvent::Reorged { id, block: rec.block });
                    }
                    self.state.held.retain(|h| h.block() != rec.block);
                    rec.block
                }
                Some(rec) => {
                    return Err(BtcError::Checkpoint(format!(
                        "window top {} does not match cursor {}",
                        rec.block.height, self.cursor.height
                    )));
                }
                // Nothing processed at the cursor (a fresh start): nothing to undo.
                None if !self.state.trimmed => self.cursor,
                None => return Err(BtcError::DeepReorg { height: self.cursor.height, window: self.cfg.reorg_window }),
            };
            self.cursor = match self.state.window.back() {
                Some(r) => r.block,
                None => {
                    // bitcoind keeps stale blocks: step to the parent.
                    let stale = self.rpc.block(block_hash_from_display(&parent_of.hash)).await?;
                    BlockRef {
                        height: parent_of.height.saturating_sub(1),
                        hash: display_hash(&stale.header.prev_blockhash),
                    }
                }
            };
        }
    }

    /// Processes the block at `cursor + 1`. Returns false if it does not extend the
    /// cursor (a reorg under way: the next poll rewinds).
    async fn process_next(&mut self, events: &mut Vec<ChainEvent>) -> Result<bool, BtcError> {
        let height = self.cursor.height.saturating_add(1);
        let Some(hash) = self.rpc.hash_at(height).await? else { return Ok(false) };
        let block = self.rpc.block(hash).await?;
        if block.block_hash() != hash {
            return Err(BtcError::BadResponse {
                method: "getblock",
                detail: format!("block for {hash} hashes differently"),
            });
        }
        if display_hash(&block.header.prev_blockhash) != self.cursor.hash {
            return Ok(false);
        }
        let bref = BlockRef { height, hash: display_hash(&hash) };
        let mut effect = scan::scan_block(&block, height, &self.vault, self.cfg.min_deposit, &mut self.state.utxos);
        scan::reject_unknown_destinations(&mut effect.payments, &self.cfg.destination_chains);
        let rejected: BTreeSet<TxHash> = effect.payments.iter().filter(|p| p.memo.is_err()).map(|p| p.txid).collect();
        let refund_to = if rejected.is_empty() {
            BTreeMap::new()
        } else {
            match self.rpc.first_input_scripts(hash, &rejected).await {
                Ok(scripts) => {
                    self.prevout_failures = 0;
                    scripts
                }
                Err(e) if self.prevout_failures.saturating_add(1) >= MAX_PREVOUT_FAILURES => {
                    warn!(target: "chain::btc", height, error = %e, "prevouts of the block's rejected deposits unavailable: processed without refund scripts");
                    self.prevout_failures = 0;
                    BTreeMap::new()
                }
                Err(e) => {
                    self.prevout_failures = self.prevout_failures.saturating_add(1);
                    // The block is not processed: put the UTXO set back as it was, or the
                    // retry would no longer see the vault UTXOs this block spends (and
                    // would take a release's change for a deposit).
                    scan::undo_block(&effect.created, &effect.spent, &mut self.state.utxos);
                    return Err(e);
                }
            }
        };
        let mut reported = Vec::new();
        for (txid, spent, payouts) in effect.spends {
            let spend = VaultSpend { txid, block: bref, spent, payouts };
            reported.push(spend.id());
            events.push(ChainEvent::VaultSpend(spend));
        }
        for route in route_payments(&self.cfg, effect.payments, bref, &refund_to) {
            match route {
                Route::Hold(h) => {
                    let refund = matches!(h.event, HeldEvent::Rejected(_));
                    debug!(target: "chain::btc", event = %h.id(), confirmations = h.confirmations, refund, "payment held for its tier");
                    self.state.held.push(h);
                }
                Route::Report(ev) => {
                    reported.push(ev.id());
                    events.push(ev);
                }
            }
        }
        self.state.window.push_back(BlockRecord {
            block: bref,
            reported,
            created: effect.created,
            spent: effect.spent,
        });
        while self.state.window.len() > self.cfg.reorg_window {
            self.state.window.pop_front();
            self.state.trimmed = true;
        }
        self.cursor = bref;
        Ok(true)
    }

    /// Releases held payments (deposits and refundable rejections) that reached their
    /// tier's depth, recording each in its block's `reported` list so that a later
    /// rewind of that block surfaces it as [`ChainEvent::Reorged`].
    fn release_held(&mut self, tip: u64, events: &mut Vec<ChainEvent>) {
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.state.held)
            .into_iter()
            .partition(|h| h.block().height.saturating_add(u64::from(h.confirmations)) <= tip.saturating_add(1));
        self.state.held = waiting;
        for h in ready {
            let block = h.block();
            if let Some(rec) = self.state.window.iter_mut().find(|r| r.block == block) {
                rec.reported.push(h.id());
            }
            events.push(h.into_event());
        }
    }

    /// Rewinds what left the best chain, then processes final blocks (bounded per call)
    /// and releases held deposits that reached their depth.
    async fn advance(&mut self, events: &mut Vec<ChainEvent>) -> Result<(), BtcError> {
        self.rewind(events).await?;
        let tip = self.rpc.tip().await?;
        let final_height = (tip + 1).saturating_sub(u64::from(self.cfg.confirmations));
        let mut budget = self.cfg.max_blocks_per_poll;
        while self.cursor.height < final_height && budget > 0 {
            if !self.process_next(events).await? {
                info!(target: "chain::btc", height = self.cursor.height + 1, "next block does not extend the cursor: reorg under way");
                break;
            }
            budget -= 1;
        }
        self.release_held(tip, events);
        Ok(())
    }

    /// Fee rate for a release: `estimatesmartfee` clamped to the configured bounds,
    /// or the floor when the node has no estimate.
    pub async fn estimate_fee_rate(&self) -> Result<FeeRate, BtcError> {
        let target = self.cfg.fees.conf_target;
        let est = self.rpc.call("estimatesmartfee", move |c| c.estimate_smart_fee(target, None)).await?;
        let bounds = self.cfg.fees;
        Ok(match est.fee_rate {
            Some(per_kvb) => {
                let sat_per_vb = per_kvb.to_sat().div_ceil(1000);
                FeeRate {
                    sat_per_vb: sat_per_vb.clamp(bounds.floor_sat_per_vb, bounds.ceiling_sat_per_vb),
                    source: FeeSource::Estimate,
                }
            }
            None => FeeRate { sat_per_vb: bounds.floor_sat_per_vb, source: FeeSource::Floor },
        })
    }

    /// Broadcasts a signed transaction. Idempotent: a transaction the node already
    /// has is not an error.
    pub async fn broadcast(&self, tx: Transaction) -> Result<Txid, BtcError> {
        let txid = tx.compute_txid();
        match self.rpc.call("sendrawtransaction", move |c| c.send_raw_transaction(&tx)).await {
            Ok(t) => Ok(t),
            Err(BtcError::Rpc { detail, .. })
                if detail.contains("already in block chain")
                    || detail.contains("txn-already-known")
                    || detail.contains("txn-already-in-mempool")
                    || detail.contains("Transaction outputs already in utxo set") =>
            {
                Ok(txid)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether bitcoind keeps a transaction index (`-txindex=1`), which following a
    /// release to depth needs ([`BitcoinSource::tx_confirmations`]).
    pub async fn has_txindex(&self) -> Result<bool, BtcError> {
        let info: serde_json::Value =
            self.rpc.call("getindexinfo", |c| c.call::<serde_json::Value>("getindexinfo", &[])).await?;
        Ok(info.get("txindex").is_some())
    }

    /// Confirmations of a transaction: `Some(0)` in the mempool, `None` when the node
    /// does not know it (never broadcast, evicted, or reorged out and dropped).
    pub async fn tx_confirmations(&self, txid: Txid) -> Result<Option<u64>, BtcError> {
        let r = self
            .rpc
            .call("getrawtransaction", move |c| {
                c.call::<serde_json::Value>("getrawtransaction", &[serde_json::json!(txid.to_string()), true.into()])
            })
            .await;
        match r {
            Ok(v) => Ok(Some(v.get("confirmations").and_then(serde_json::Value::as_u64).unwrap_or(0))),
            Err(BtcError::Rpc { code: Some(-5), .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl ChainSource for BitcoinSource {
    fn chain(&self) -> ChainId {
        ChainId::BITCOIN
    }

    async fn heads(&mut self) -> Result<ChainHeads, AdapterError> {
        let tip = self.rpc.tip().await?;
        Ok(ChainHeads { head: tip, finalized: (tip + 1).saturating_sub(u64::from(self.cfg.confirmations)) })
    }

    /// A failure after some progress still returns what was done (events and the
    /// checkpoint after them): the in-memory cursor has moved past those blocks, so
    /// dropping their events would skip them. The error recurs on the next poll.
    async fn poll(&mut self) -> Result<PollOutcome, AdapterError> {
        let start = self.cursor;
        let mut events = Vec::new();
        if let Err(e) = self.advance(&mut events).await {
            if self.cursor == start && events.is_empty() {
                return Err(e.into());
            }
            warn!(target: "chain::btc", error = %e, height = self.cursor.height, "poll stopped early; returning the progress made");
        }
        Ok(PollOutcome { events, checkpoint: self.checkpoint()? })
    }

    async fn recheck(&mut self, observed: &Observed) -> Result<Inclusion, AdapterError> {
        let hash = block_hash_from_display(&observed.block.hash);
        Ok(match self.rpc.block_confirmations(hash).await? {
            Some(confirmations) => Inclusion::Included { confirmations },
            None => Inclusion::NotCanonical,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use btcfi_types::{DepositMemo, EvmAddress, TxHash};

    const BTC: u64 = 100_000_000;

    fn cfg() -> BitcoinConfig {
        BitcoinConfig {
            rpc_url: "http://127.0.0.1:1".into(),
            rpc_user: Some("u".into()),
            rpc_password: Some("p".into()),
            rpc_cookie_file: None,
            network: bitcoin::Network::Regtest,
            vault_address: String::new(),
            confirmations: 2,
            tiers: vec![
                ConfirmationTier { min_amount: Sats(5 * BTC), confirmations: 6 },
                ConfirmationTier { min_amount: Sats(40 * BTC), confirmations: 12 },
            ],
            min_deposit: Sats(BTC / 2),
            fees: FeeBounds::default(),
            peg_out_fee: Sats(2_000),
            rbf_after_secs: 600,
            start_height: 0,
            max_blocks_per_poll: 10,
            reorg_window: 20,
            destination_chains: vec![],
        }
    }

    fn pay(tx: u8, vout: u32, sats: u64, memo: Result<DepositMemo, RejectReason>) -> scan::VaultPayment {
        scan::VaultPayment { txid: TxHash([tx; 32]), vout, amount: Sats(sats), memo }
    }

    fn valid() -> Result<DepositMemo, RejectReason> {
        Ok(DepositMemo { dest_chain: ChainId(137), recipient: EvmAddress([7; 20]) })
    }

    /// (event, Some(depth) if held / None if reported, rejected?)
    fn summary(routes: &[Route]) -> Vec<(EventId, Option<u32>, bool)> {
        routes
            .iter()
            .map(|r| match r {
                Route::Hold(h) => (h.id(), Some(h.confirmations), matches!(h.event, HeldEvent::Rejected(_))),
                Route::Report(ev) => (ev.id(), None, matches!(ev, ChainEvent::Rejected(_))),
            })
            .collect()
    }

    #[test]
    fn tier_applies_to_the_sum_of_a_transactions_vault_outputs() {
        let cfg = cfg();
        let block = BlockRef { height: 100, hash: [1; 32] };
        let id = |tx: u8, vout: u32| EventId::new(ChainId::BITCOIN, TxHash([tx; 32]), vout);
        let mut payments = Vec::new();
        // Tx 1: ten outputs of 4.9 BTC, each under the 5-BTC tier, 49 BTC together: the
        // 40-BTC tier's depth for every one of them.
        for vout in 0..10 {
            payments.push(pay(1, vout, 49 * BTC / 10, valid()));
        }
        // Tx 2: one output of 4.9 BTC alone: the base depth.
        payments.push(pay(2, 0, 49 * BTC / 10, valid()));
        // Tx 3: 4.9 BTC valid plus a rejected 0.2 BTC (below the minimum) in the same
        // transaction: 5.1 BTC to the vault, so the valid deposit waits for the 5-BTC tier.
        // The rejected one has no refund_to (none in the map): reported at once.
        payments.push(pay(3, 0, 49 * BTC / 10, valid()));
        payments.push(pay(3, 1, BTC / 5, Err(RejectReason::BelowMinimum { minimum: cfg.min_deposit })));
        // Tx 4: two outputs of 3 BTC, interleaved after other transactions' outputs.
        payments.push(pay(4, 2, 3 * BTC, valid()));
        payments.push(pay(4, 5, 3 * BTC, valid()));

        let routes = route_payments(&cfg, payments, block, &BTreeMap::new());
        let mut expected: Vec<_> = (0..10).map(|v| (id(1, v), Some(12), false)).collect();
        expected.push((id(2, 0), None, false));
        expected.push((id(3, 0), Some(6), false));
        expected.push((id(3, 1), None, true));
        expected.push((id(4, 2), Some(6), false));
        expected.push((id(4, 5), Some(6), false));
        assert_eq!(summary(&routes), expected, "a deposit waits for the tier of its transaction's total to the vault");
        // Held deposits keep their own amount in the attestation: only the depth changes.
        match routes.first() {
            Some(Route::Hold(Held { event: HeldEvent::Observed(o), .. })) => assert!(matches!(
                o.attestation.kind,
                AttestationKind::PegIn { amount: Sats(a), .. } if a == 49 * BTC / 10
            )),
            other => panic!("expected a held deposit, got {other:?}"),
        }
    }

    #[test]
    fn tier_total_saturates_instead_of_wrapping() {
        // Amounts cannot overflow on Bitcoin, but the sum is checked: an overflow takes
        // the deepest tier, never a wrapped (small) total.
        let cfg = cfg();
        let block = BlockRef { height: 1, hash: [2; 32] };
        let routes =
            route_payments(&cfg, vec![pay(9, 0, u64::MAX, valid()), pay(9, 1, BTC, valid())], block, &BTreeMap::new());
        assert!(routes.iter().all(|r| matches!(r, Route::Hold(Held { confirmations: 12, .. }))), "{routes:?}");
    }

    fn malformed() -> Result<DepositMemo, RejectReason> {
        Err(RejectReason::MalformedMemo(btcfi_types::MemoError::BadMagic))
    }

    #[test]
    fn rejected_payments_carry_refund_to_from_the_map() {
        let cfg = cfg();
        let block = BlockRef { height: 7, hash: [3; 32] };
        let script = vec![0x00, 0x14, 0xaa, 0xbb];
        let refund_to = BTreeMap::from([(TxHash([1; 32]), script.clone()), (TxHash([3; 32]), vec![0x51])]);
        // Tx 1: rejected, in the map. Tx 2: rejected, not in the map (a coinbase first
        // input). Tx 3: valid and in the map: a valid deposit has no refund to carry.
        let payments =
            vec![pay(1, 0, BTC, malformed()), pay(2, 1, BTC, Err(RejectReason::MissingMemo)), pay(3, 0, BTC, valid())];
        let routes = route_payments(&cfg, payments, block, &refund_to);
        match routes.as_slice() {
            [
                Route::Report(ChainEvent::Rejected(r1)),
                Route::Report(ChainEvent::Rejected(r2)),
                Route::Report(ChainEvent::Observed(_)),
            ] => {
                assert_eq!(r1.refund_to, Some(script));
                assert_eq!(r1.refund, None, "adapters never fill the refund");
                assert_eq!((r1.block, r1.amount), (block, Some(Sats(BTC))));
                assert_eq!(r2.refund_to, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_large_refundable_rejection_waits_for_its_tier_and_one_without_refund_to_does_not() {
        let cfg = cfg();
        let block = BlockRef { height: 50, hash: [4; 32] };
        let id = |tx: u8, vout: u32| EventId::new(ChainId::BITCOIN, TxHash([tx; 32]), vout);
        let refund_to = BTreeMap::from([
            (TxHash([1; 32]), vec![0x51]),
            (TxHash([3; 32]), vec![0x52]),
            (TxHash([5; 32]), vec![0x53]),
        ]);
        let payments = vec![
            // Tx 1: 6 BTC with a bad memo and a refund_to: a refund of 6 BTC waits for the
            // 5-BTC tier like a deposit of 6 BTC.
            pay(1, 0, 6 * BTC, malformed()),
            // Tx 2: the same without refund_to: nothing to refund, reported at once.
            pay(2, 0, 6 * BTC, malformed()),
            // Tx 3: a small refundable rejection: its transaction needs only the base depth.
            pay(3, 0, BTC, Err(RejectReason::MissingMemo)),
            // Tx 5: the tier is the transaction's total: a 0.2-BTC rejected output of a
            // 44-BTC transaction waits for the 40-BTC tier, as its valid deposit does.
            pay(5, 0, 438 * BTC / 10, valid()),
            pay(5, 1, BTC / 5, Err(RejectReason::BelowMinimum { minimum: cfg.min_deposit })),
        ];
        let routes = route_payments(&cfg, payments, block, &refund_to);
        assert_eq!(
            summary(&routes),
            vec![
                (id(1, 0), Some(6), true),
                (id(2, 0), None, true),
                (id(3, 0), None, true),
                (id(5, 0), Some(12), false),
                (id(5, 1), Some(12), true),
            ]
        );

        // Released at its tier's depth as the Rejected it was, recorded in its block so a
        // later rewind reports it as Reorged; held across a checkpoint.
        let mut state = State::default();
        state.window.push_back(BlockRecord { block, reported: vec![], created: vec![], spent: vec![] });
        for r in routes {
            if let Route::Hold(h) = r {
                state.held.push(h);
            }
        }
        let bytes = serde_json::to_vec(&state).unwrap();
        let state: State = serde_json::from_slice(&bytes).unwrap();
        let rpc = BtcRpc::new(&cfg).unwrap();
        let mut src = BitcoinSource { cfg, rpc, vault: ScriptBuf::new(), cursor: block, state, prevout_failures: 0 };
        let mut events = Vec::new();
        src.release_held(block.height + 4, &mut events);
        assert!(events.is_empty(), "5 confirmations of 6: {events:?}");
        src.release_held(block.height + 5, &mut events);
        match events.as_slice() {
            [ChainEvent::Rejected(r)] => {
                assert_eq!(r.id, id(1, 0));
                assert_eq!(r.refund_to, Some(vec![0x51]));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(src.state.window.front().map(|r| r.reported.clone()), Some(vec![id(1, 0)]));
        assert_eq!(src.state.held.len(), 2);
    }

    #[test]
    fn held_state_written_before_held_rejections_still_decodes() {
        let block = BlockRef { height: 5, hash: [6; 32] };
        let observed = Observed {
            attestation: Attestation {
                event: EventId::new(ChainId::BITCOIN, TxHash([8; 32]), 0),
                kind: AttestationKind::PegIn {
                    dest_chain: ChainId(1),
                    recipient: EvmAddress([1; 20]),
                    amount: Sats(BTC),
                },
            },
            block,
        };
        // The old shape of Held, field for field.
        let old = serde_json::json!({ "observed": observed, "confirmations": 6 });
        let held: Held = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(held, Held { event: HeldEvent::Observed(observed), confirmations: 6 });
        assert_eq!(serde_json::to_value(&held).unwrap(), old, "a held deposit is still written as before");
        // Old Rejected records (no refund fields) decode too.
        let r: Rejected = serde_json::from_value(serde_json::json!({
            "id": EventId::new(ChainId::BITCOIN, TxHash([8; 32]), 1), "block": block, "amount": null, "reason": "x"
        }))
        .unwrap();
        assert_eq!((r.refund_to, r.refund), (None, None));
        // A held rejection has no `observed`: an older binary refuses it rather than
        // attesting it as a deposit; neither or both is corrupt.
        assert!(serde_json::from_value::<Held>(serde_json::json!({ "confirmations": 6 })).is_err());
    }

    /// A `getblock <hash> 3` answer with the given transactions.
    fn verbose(hash: &BlockHash, txs: Vec<Value>) -> Value {
        json!({ "hash": hash.to_string(), "height": 1, "tx": txs })
    }

    fn vtx(txid: &Txid, vin0: Value) -> Value {
        json!({ "txid": txid.to_string(), "vin": [vin0, { "txid": "00".repeat(32), "vout": 0 }], "vout": [] })
    }

    #[test]
    fn first_input_scripts_from_a_verbose_block() {
        let hash = BlockHash::from_byte_array([9; 32]);
        let coinbase = Txid::from_byte_array([1; 32]);
        let paid = Txid::from_byte_array([2; 32]);
        let other = Txid::from_byte_array([3; 32]);
        let v = verbose(
            &hash,
            vec![
                vtx(&coinbase, json!({ "coinbase": "03", "sequence": 0 })),
                vtx(
                    &paid,
                    json!({ "txid": "11".repeat(32), "vout": 1, "prevout": { "value": 1.0, "scriptPubKey": { "hex": "0014abcd", "type": "witness_v0_keyhash" } } }),
                ),
                // Not wanted: not even looked at, however odd.
                json!({ "txid": other.to_string(), "vin": "odd" }),
            ],
        );
        let wanted = BTreeSet::from([scan::display_txid(&coinbase), scan::display_txid(&paid)]);
        let got = parse_first_input_scripts(&v, &hash, &wanted).unwrap();
        assert_eq!(got, BTreeMap::from([(scan::display_txid(&paid), vec![0x00, 0x14, 0xab, 0xcd])]));
        // The key is the display-order txid, as in the payments' ids.
        assert_eq!(got.keys().next().map(ToString::to_string), Some(paid.to_string()));
    }

    #[test]
    fn malformed_verbose_blocks_are_bad_responses() {
        let hash = BlockHash::from_byte_array([9; 32]);
        let t = Txid::from_byte_array([2; 32]);
        let wanted = BTreeSet::from([scan::display_txid(&t)]);
        let prevout = |spk: Value| json!({ "txid": "11".repeat(32), "vout": 0, "prevout": { "scriptPubKey": spk } });
        let cases = [
            json!(null),
            json!({ "hash": hash.to_string() }),
            json!({ "hash": "00".repeat(32), "tx": [] }),
            verbose(&hash, vec![]),
            verbose(&hash, vec![json!({ "txid": 5 })]),
            verbose(&hash, vec![json!({ "txid": t.to_string(), "vin": [] })]),
            verbose(&hash, vec![json!({ "txid": t.to_string() })]),
            verbose(&hash, vec![vtx(&t, prevout(json!({ "hex": "zz" })))]),
            verbose(&hash, vec![vtx(&t, prevout(json!({})))]),
            verbose(&hash, vec![vtx(&t, json!({ "prevout": 3 }))]),
        ];
        for v in cases {
            match parse_first_input_scripts(&v, &hash, &wanted) {
                Err(BtcError::BadResponse { method: "getblock", .. }) => {}
                other => panic!("{v}: expected BadResponse, got {other:?}"),
            }
        }
    }
}
