//! The source side of an EVM chain: bridge burns that reached finality.
//!
//! Each [`EvmSource::poll`] does one bounded step:
//! 1. ask the best endpoint for the head and derive the final height (head − depth,
//!    or the node's `finalized`/`safe` block);
//! 2. check that the cursor block is still canonical. If it is not, the chain
//!    reorganised *below* finality: walk back through the recent cursors kept in the
//!    checkpoint to the newest one still canonical, emit [`ChainEvent::Reorged`] for
//!    every reported event whose block left the chain, and return (the next poll
//!    rescans from there; events in blocks that stayed are not reported twice);
//! 3. otherwise read the bridge's burn logs of one range `cursor+1 ..= min(cursor +
//!    range, final)`, halving the range on a provider's refusal, check that each
//!    log's block is still the canonical block at its height, decode each log into an
//!    [`ChainEvent::Observed`] or a [`ChainEvent::Rejected`], and move the cursor to
//!    the end of the range.
//!
//! The returned [`Checkpoint`] carries the cursor and, in `state`, a bounded window
//! of recent cursors and reported events (JSON): what a restart needs to neither
//! repeat nor skip an event, and what reorg handling needs to know what to retract.

use super::{
    EvmError,
    config::{EvmChainConfig, Finality},
    decode::{burn_topics, decode_burn},
    endpoints::{EndpointHealth, EndpointSet},
    range::LogRange,
};
use crate::{
    AdapterError, BlockRef, ChainEvent, ChainHeads, ChainSource, Checkpoint, Inclusion, Observed, PollOutcome, Rejected,
};
use alloy::{
    eips::BlockNumberOrTag,
    primitives::{Address, B256, U64},
    providers::Provider,
    rpc::types::{Filter, Log},
};
use async_trait::async_trait;
use btcfi_types::{Attestation, ChainId, EventId, TxHash};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tracing::{debug, error, info, instrument, warn};

/// Recent cursors kept for walking back after a reorg below finality.
pub const MAX_ANCHORS: usize = 32;
/// Reported events kept for retraction and de-duplication.
pub const MAX_REPORTED_EVENTS: usize = 10_000;

/// The part of a block the adapter reads (tolerant of chain-specific header fields).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockHeader {
    number: U64,
    hash: B256,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ReportedBlock {
    block: BlockRef,
    events: Vec<EventId>,
}

/// The adapter state inside [`Checkpoint::state`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ScanState {
    /// Recent cursors, oldest first; the last one is the checkpoint's cursor.
    anchors: Vec<BlockRef>,
    /// Blocks above the oldest anchor with reported events, ascending.
    reported: Vec<ReportedBlock>,
}

/// Version of the checkpoint state format.
const STATE_VERSION: u8 = 1;

/// The checkpoint state as stored: JSON with hashes in hex, `[height, "hash"]` per
/// block and `["tx hash", log index]` per event (the chain is the source's own).
#[derive(Debug, Serialize, Deserialize)]
struct WireState {
    v: u8,
    anchors: Vec<(u64, String)>,
    reported: Vec<WireReported>,
}

#[derive(Debug, Serialize, Deserialize)]
struct WireReported {
    block: (u64, String),
    events: Vec<(String, u32)>,
}

fn hash_from_hex(s: &str) -> Result<[u8; 32], EvmError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|e| EvmError::Checkpoint(format!("hash {s:?}: {e}")))?;
    Ok(out)
}

impl ScanState {
    fn decode(chain: ChainId, cursor: BlockRef, bytes: &[u8]) -> Result<Self, EvmError> {
        let mut state = if bytes.is_empty() {
            ScanState::default()
        } else {
            let wire: WireState = serde_json::from_slice(bytes).map_err(|e| EvmError::Checkpoint(e.to_string()))?;
            if wire.v != STATE_VERSION {
                return Err(EvmError::Checkpoint(format!("state format version {}, expected {STATE_VERSION}", wire.v)));
            }
            let block = |(height, hash): &(u64, String)| -> Result<BlockRef, EvmError> {
                Ok(BlockRef { height: *height, hash: hash_from_hex(hash)? })
            };
            let mut state = ScanState::default();
            for a in &wire.anchors {
                state.anchors.push(block(a)?);
            }
            for r in &wire.reported {
                let mut events = Vec::with_capacity(r.events.len());
                for (tx, index) in &r.events {
                    events.push(EventId::new(chain, TxHash(hash_from_hex(tx)?), *index));
                }
                state.reported.push(ReportedBlock { block: block(&r.block)?, events });
            }
            state
        };
        if state.anchors.last() != Some(&cursor) {
            if state.anchors.iter().any(|a| a.height >= cursor.height) {
                return Err(EvmError::Checkpoint(format!(
                    "cursor {} is not the newest kept block of the checkpoint state",
                    cursor.height
                )));
            }
            state.anchors.push(cursor);
        }
        Ok(state)
    }

    fn encode(&self) -> Vec<u8> {
        let wire = WireState {
            v: STATE_VERSION,
            anchors: self.anchors.iter().map(|a| (a.height, hex::encode(a.hash))).collect(),
            reported: self
                .reported
                .iter()
                .map(|r| WireReported {
                    block: (r.block.height, hex::encode(r.block.hash)),
                    events: r.events.iter().map(|id| (hex::encode(id.tx.0), id.index)).collect(),
                })
                .collect(),
        };
        // Serializing integers and strings cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    fn contains(&self, id: &EventId, block: &BlockRef) -> bool {
        self.reported.iter().any(|r| r.block == *block && r.events.contains(id))
    }

    fn record(&mut self, id: EventId, block: BlockRef) {
        match self.reported.last_mut() {
            Some(last) if last.block == block => last.events.push(id),
            _ => self.reported.push(ReportedBlock { block, events: vec![id] }),
        }
    }

    fn advance(&mut self, cursor: BlockRef) {
        if self.anchors.last() != Some(&cursor) {
            self.anchors.push(cursor);
        }
        self.prune();
    }

    fn event_count(&self) -> usize {
        self.reported.iter().map(|r| r.events.len()).sum()
    }

    /// Keeps at most [`MAX_ANCHORS`] cursors and the reported events above the oldest
    /// of them (below it nothing is ever rescanned), within [`MAX_REPORTED_EVENTS`].
    fn prune(&mut self) {
        loop {
            let too_many_anchors = self.anchors.len() > MAX_ANCHORS;
            let too_many_events = self.event_count() > MAX_REPORTED_EVENTS && self.anchors.len() > 1;
            if !(too_many_anchors || too_many_events) {
                break;
            }
            self.anchors.remove(0);
            let floor = self.anchors.first().map_or(0, |a| a.height);
            self.reported.retain(|r| r.block.height > floor);
        }
        let floor = self.anchors.first().map_or(0, |a| a.height);
        self.reported.retain(|r| r.block.height > floor);
    }
}

/// Counters of the scan, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// `eth_getLogs` ranges read successfully.
    pub chunks: u64,
    /// Blocks covered by those ranges.
    pub blocks_scanned: u64,
    /// Burn logs seen (observed + rejected, before de-duplication).
    pub logs: u64,
    pub observed: u64,
    pub rejected: u64,
    pub reorged: u64,
    /// Ranges a provider refused as too large.
    pub range_refusals: u64,
}

/// Follows one EVM chain's bridge contract (see the module docs).
#[derive(Debug)]
pub struct EvmSource {
    config: EvmChainConfig,
    endpoints: EndpointSet,
    range: LogRange,
    /// `None` until the block before `start_block` has been read.
    cursor: Option<BlockRef>,
    start_block: u64,
    state: ScanState,
    stats: ScanStats,
}

fn block_ref(h: &BlockHeader) -> BlockRef {
    BlockRef { height: h.number.to::<u64>(), hash: h.hash.0 }
}

impl EvmSource {
    /// A source that resumes from `checkpoint`, or (without one) starts scanning at
    /// `start_block` (typically the bridge's deployment block). No I/O happens here.
    pub fn new(config: EvmChainConfig, checkpoint: Option<Checkpoint>, start_block: u64) -> Result<Self, EvmError> {
        let endpoints = config.endpoint_set()?;
        let (cursor, state) = match checkpoint {
            Some(cp) => (Some(cp.cursor), ScanState::decode(config.chain_id, cp.cursor, &cp.state)?),
            None => (None, ScanState::default()),
        };
        Ok(Self {
            range: LogRange::new(config.min_log_range, config.max_log_range),
            config,
            endpoints,
            cursor,
            start_block: start_block.max(1),
            state,
            stats: ScanStats::default(),
        })
    }

    pub fn config(&self) -> &EvmChainConfig {
        &self.config
    }

    /// Per-endpoint health, in configured order.
    pub fn endpoint_health(&self) -> Vec<EndpointHealth> {
        self.endpoints.health()
    }

    /// The `eth_getLogs` range the next chunk will ask for.
    pub fn current_range(&self) -> u64 {
        self.range.current()
    }

    pub fn stats(&self) -> ScanStats {
        ScanStats { range_refusals: self.range.refusals(), ..self.stats }
    }

    /// The checkpoint as of the last poll (`None` before the first one resolved the
    /// start block).
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        self.cursor.map(|cursor| Checkpoint { cursor, state: self.state.encode() })
    }

    async fn block(&mut self, at: BlockNumberOrTag) -> Result<Option<BlockHeader>, EvmError> {
        let header = self
            .endpoints
            .call("eth_getBlockByNumber", move |p| async move {
                p.raw_request::<_, Option<BlockHeader>>("eth_getBlockByNumber".into(), (at, false)).await
            })
            .await?;
        if let (Some(h), Some(n)) = (header, at.as_number())
            && h.number.to::<u64>() != n
        {
            let reason = format!("asked for block {n}, got block {}", h.number);
            self.endpoints.demote_last(reason.clone());
            return Err(self.bad_response("eth_getBlockByNumber", reason));
        }
        Ok(header)
    }

    fn bad_response(&self, method: &'static str, reason: String) -> EvmError {
        let endpoint = self
            .endpoints
            .last_used()
            .and_then(|i| self.endpoints.health().into_iter().nth(i))
            .map_or_else(|| "?".to_owned(), |h| h.url);
        EvmError::BadResponse { endpoint, method, reason }
    }

    async fn heads_inner(&mut self) -> Result<ChainHeads, EvmError> {
        let head = self.endpoints.head().await?;
        let finalized = match self.config.finality {
            Finality::Depth(d) => head.saturating_sub(d),
            Finality::Tag(tag) => {
                let at = match tag {
                    super::config::FinalityTag::Finalized => BlockNumberOrTag::Finalized,
                    super::config::FinalityTag::Safe => BlockNumberOrTag::Safe,
                };
                self.block(at).await?.map_or(0, |b| b.number.to::<u64>()).min(head)
            }
        };
        Ok(ChainHeads { head, finalized })
    }

    /// Reads the block before `start_block` as the first cursor, once it is final.
    async fn resolve_cursor(&mut self, heads: ChainHeads) -> Result<BlockRef, EvmError> {
        if let Some(c) = self.cursor {
            return Ok(c);
        }
        let height = self.start_block.saturating_sub(1);
        if height > heads.finalized {
            return Err(EvmError::StartBlockAhead { start: self.start_block, finalized: heads.finalized });
        }
        let Some(h) = self.block(BlockNumberOrTag::Number(height)).await? else {
            return Err(self.bad_response("eth_getBlockByNumber", format!("final block {height} not found")));
        };
        let cursor = block_ref(&h);
        self.cursor = Some(cursor);
        self.state = ScanState { anchors: vec![cursor], reported: Vec::new() };
        info!(target: "chain::evm", chain = %self.config.name, height, "scan starts");
        Ok(cursor)
    }

    fn outcome(&self, events: Vec<ChainEvent>) -> Result<PollOutcome, EvmError> {
        let Some(cursor) = self.cursor else {
            return Err(EvmError::Checkpoint("no cursor".into()));
        };
        Ok(PollOutcome { events, checkpoint: Checkpoint { cursor, state: self.state.encode() } })
    }

    /// The cursor left the canonical chain: rewind to the newest kept block that is
    /// still canonical and retract what was reported above it.
    async fn rewind(&mut self, cursor: BlockRef) -> Result<PollOutcome, EvmError> {
        let mut canonical: HashMap<u64, Option<[u8; 32]>> = HashMap::new();
        let mut surviving = None;
        for anchor in self.state.anchors.clone().iter().rev() {
            let hash = self.block(BlockNumberOrTag::Number(anchor.height)).await?.map(|b| b.hash.0);
            canonical.insert(anchor.height, hash);
            if hash == Some(anchor.hash) {
                surviving = Some(*anchor);
                break;
            }
        }
        let Some(surviving) = surviving else {
            let oldest_kept = self.state.anchors.first().map_or(cursor.height, |a| a.height);
            let err = EvmError::ReorgBeyondWindow { cursor_height: cursor.height, oldest_kept };
            error!(target: "chain::evm", chain = %self.config.name, error = %err, "scan halted");
            return Err(err);
        };
        let mut events = Vec::new();
        let mut kept = Vec::new();
        for r in std::mem::take(&mut self.state.reported) {
            if r.block.height <= surviving.height {
                kept.push(r);
                continue;
            }
            let hash = match canonical.get(&r.block.height) {
                Some(h) => *h,
                None => {
                    let h = self.block(BlockNumberOrTag::Number(r.block.height)).await?.map(|b| b.hash.0);
                    canonical.insert(r.block.height, h);
                    h
                }
            };
            if hash == Some(r.block.hash) {
                // Still canonical: keep it so the rescan does not report it again.
                kept.push(r);
            } else {
                for id in &r.events {
                    error!(target: "chain::evm", chain = %self.config.name, event = %id, height = r.block.height,
                        "reported event's block left the canonical chain (reorg deeper than finality)");
                    events.push(ChainEvent::Reorged { id: *id, block: r.block });
                }
            }
        }
        self.state.reported = kept;
        self.state.anchors.retain(|a| a.height <= surviving.height);
        self.cursor = Some(surviving);
        self.stats.reorged = self.stats.reorged.saturating_add(events.len() as u64);
        warn!(target: "chain::evm", chain = %self.config.name, from = cursor.height, to = surviving.height,
            retracted = events.len(), "cursor rewound after a reorg below finality");
        self.outcome(events)
    }

    /// Reads logs of `from..=to`, shrinking the range while the provider refuses.
    /// The bridge's burn logs of blocks `from..=to`.
    fn filter(&self, from: u64, to: u64) -> Filter {
        Filter::new().address(self.config.bridge).event_signature(burn_topics().to_vec()).from_block(from).to_block(to)
    }

    /// Asks the other endpoints for the logs of `from..=to` until
    /// `min_agreeing_endpoints` (with the one that served `logs`) returned exactly the
    /// same; an endpoint that answers otherwise is counted as disagreeing and logged.
    async fn confirm_logs(
        &mut self,
        from: u64,
        to: u64,
        logs: &[Log],
        served_by: Option<usize>,
    ) -> Result<(), EvmError> {
        let needed = self.config.min_agreeing_endpoints;
        if needed <= 1 || logs.is_empty() {
            return Ok(());
        }
        type Print = (Option<B256>, Option<B256>, Option<u64>, Address, Vec<B256>, Vec<u8>);
        let print = |logs: &[Log]| -> BTreeSet<Print> {
            logs.iter()
                .map(|l| {
                    (
                        l.block_hash,
                        l.transaction_hash,
                        l.log_index,
                        l.address(),
                        l.topics().to_vec(),
                        l.data().data.to_vec(),
                    )
                })
                .collect()
        };
        let want = print(logs);
        let primary = served_by;
        let filter = self.filter(from, to);
        let mut agreeing = 1usize;
        for i in (0..self.endpoints.len()).filter(|i| Some(*i) != primary) {
            if agreeing >= needed {
                break;
            }
            let answer = self
                .endpoints
                .call_at(i, "eth_getLogs", |p| {
                    let filter = filter.clone();
                    async move { p.get_logs(&filter).await }
                })
                .await;
            match answer {
                Ok(other) if print(&other) == want => agreeing += 1,
                Ok(other) => {
                    let reason = format!(
                        "blocks {from}..={to}: {} logs where the serving endpoint returned {}, or other contents",
                        other.len(),
                        logs.len()
                    );
                    warn!(target: "chain::evm", chain = %self.config.name, endpoint = i, %reason, "endpoints disagree on the bridge's logs");
                    self.endpoints.record_disagreement(i, reason);
                }
                Err(e) => {
                    debug!(target: "chain::evm", chain = %self.config.name, endpoint = i, error = %e, "no second answer for the logs")
                }
            }
        }
        if agreeing < needed {
            return Err(EvmError::Disagreement { from, to, agreeing, needed });
        }
        Ok(())
    }

    /// The logs of the next range from `from`, its end, and the endpoint that served them.
    async fn logs(&mut self, from: u64, final_height: u64) -> Result<(u64, Vec<Log>, Option<usize>), EvmError> {
        loop {
            let size = self.range.current();
            let to = from.saturating_add(size - 1).min(final_height);
            let filter = self.filter(from, to);
            let result = self
                .endpoints
                .call("eth_getLogs", |p| {
                    let filter = filter.clone();
                    async move { p.get_logs(&filter).await }
                })
                .await;
            match result {
                Ok(logs) => return Ok((to, logs, self.endpoints.last_used())),
                Err(err) if err.is_range_refusal() => {
                    let asked = to - from + 1;
                    debug!(target: "chain::evm", chain = %self.config.name, from, to, error = %err, "log range refused");
                    if !self.range.refused(asked) {
                        return Err(EvmError::RangeRefused { from, to, reason: err.to_string() });
                    }
                }
                Err(err) => {
                    if matches!(err.root(), EvmError::Timeout { .. }) {
                        // A range too heavy to answer in time looks like a timeout.
                        self.range.refused(to - from + 1);
                    }
                    return Err(err);
                }
            }
        }
    }

    /// Checks one log against what was asked; returns its position and identity.
    fn check_log(&self, log: &Log, from: u64, to: u64) -> Result<(BlockRef, EventId), String> {
        if log.removed {
            return Err("log marked removed in a final range".into());
        }
        if log.address() != self.config.bridge {
            return Err(format!("log from {} (asked for {})", log.address(), self.config.bridge));
        }
        if !log.topic0().is_some_and(|t| burn_topics().contains(t)) {
            return Err("log with a topic that was not asked for".into());
        }
        let (Some(height), Some(hash), Some(tx), Some(index)) =
            (log.block_number, log.block_hash, log.transaction_hash, log.log_index)
        else {
            return Err("log without block number, block hash, tx hash or log index".into());
        };
        if height < from || height > to {
            return Err(format!("log at block {height} outside the range {from}..={to}"));
        }
        let index = u32::try_from(index).map_err(|_| format!("log index {index} out of range"))?;
        Ok((BlockRef { height, hash: hash.0 }, EventId::new(self.config.chain_id, TxHash(tx.0), index)))
    }

    async fn scan(&mut self, cursor: BlockRef, final_height: u64) -> Result<PollOutcome, EvmError> {
        let from = cursor.height + 1;
        let (to, mut logs, served_by) = self.logs(from, final_height).await?;
        self.range.succeeded();
        // The end of the range becomes the cursor; its hash is read after the logs,
        // and a reorg in between shows up as a non-canonical cursor at the next poll.
        let Some(end) = self.block(BlockNumberOrTag::Number(to)).await? else {
            return Err(self.bad_response("eth_getBlockByNumber", format!("final block {to} not found")));
        };
        let mut checked = Vec::with_capacity(logs.len());
        for log in logs.drain(..) {
            match self.check_log(&log, from, to) {
                Ok((block, id)) => checked.push((block, id, log)),
                Err(reason) => {
                    self.endpoints.demote_last(reason.clone());
                    return Err(self.bad_response("eth_getLogs", reason));
                }
            }
        }
        checked.sort_by_key(|(block, id, _)| (block.height, id.index));

        // Re-check each log's block against the canonical chain before reporting.
        let mut canonical: BTreeMap<u64, [u8; 32]> = BTreeMap::new();
        for (block, _, _) in &checked {
            if canonical.contains_key(&block.height) {
                continue;
            }
            let hash = self.block(BlockNumberOrTag::Number(block.height)).await?.map(|b| b.hash.0);
            match hash {
                Some(h) => {
                    canonical.insert(block.height, h);
                }
                None => return Err(EvmError::ChainMoved { height: block.height }),
            }
        }
        if checked.iter().any(|(block, _, _)| canonical.get(&block.height) != Some(&block.hash)) {
            let height = checked
                .iter()
                .find(|(b, _, _)| canonical.get(&b.height) != Some(&b.hash))
                .map_or(from, |(b, _, _)| b.height);
            return Err(EvmError::ChainMoved { height });
        }
        // Independent endpoints must say the same before anything in the range counts.
        let logs: Vec<Log> = checked.iter().map(|(_, _, l)| l.clone()).collect();
        self.confirm_logs(from, to, &logs, served_by).await?;

        let mut events = Vec::new();
        for (block, id, log) in checked {
            self.stats.logs = self.stats.logs.saturating_add(1);
            if self.state.contains(&id, &block) {
                continue;
            }
            self.state.record(id, block);
            match decode_burn(self.config.chain_id, log.topics(), &log.data().data) {
                Ok(kind) => {
                    debug!(target: "chain::evm", chain = %self.config.name, event = %id, height = block.height, "burn final");
                    self.stats.observed = self.stats.observed.saturating_add(1);
                    events.push(ChainEvent::Observed(Observed { attestation: Attestation { event: id, kind }, block }));
                }
                Err(refusal) => {
                    warn!(target: "chain::evm", chain = %self.config.name, event = %id, reason = %refusal.reason, "burn log rejected");
                    self.stats.rejected = self.stats.rejected.saturating_add(1);
                    events.push(ChainEvent::Rejected(Rejected {
                        id,
                        block,
                        amount: refusal.amount,
                        reason: refusal.reason,
                        refund_to: None,
                        refund: None,
                    }));
                }
            }
        }
        let new_cursor = block_ref(&end);
        self.cursor = Some(new_cursor);
        self.state.advance(new_cursor);
        self.stats.chunks = self.stats.chunks.saturating_add(1);
        self.stats.blocks_scanned = self.stats.blocks_scanned.saturating_add(to - from + 1);
        self.outcome(events)
    }

    async fn poll_inner(&mut self) -> Result<PollOutcome, EvmError> {
        let heads = self.heads_inner().await?;
        let cursor = self.resolve_cursor(heads).await?;
        if heads.head < cursor.height {
            // This endpoint is behind what an earlier one showed us: no progress, and
            // no reorg claim either (a missing block is not a different block).
            debug!(target: "chain::evm", chain = %self.config.name, head = heads.head, cursor = cursor.height, "endpoint behind the cursor");
            return self.outcome(Vec::new());
        }
        match self.block(BlockNumberOrTag::Number(cursor.height)).await? {
            Some(b) if b.hash.0 == cursor.hash => {}
            Some(_) => return self.rewind(cursor).await,
            None => return self.outcome(Vec::new()),
        }
        if cursor.height >= heads.finalized {
            return self.outcome(Vec::new());
        }
        self.scan(cursor, heads.finalized).await
    }

    async fn recheck_inner(&mut self, observed: &Observed) -> Result<Inclusion, EvmError> {
        let id = observed.attestation.event;
        if id.chain != self.config.chain_id {
            return Err(EvmError::Config {
                key: format!("{}.chain_id", self.config.name),
                reason: format!("asked to re-check an event of chain {}", id.chain),
            });
        }
        let tx = B256::from(id.tx.0);
        let receipt = self
            .endpoints
            .call("eth_getTransactionReceipt", move |p| async move { p.get_transaction_receipt(tx).await })
            .await?;
        let Some(receipt) = receipt else { return Ok(Inclusion::NotCanonical) };
        if receipt.block_hash.map(|h| h.0) != Some(observed.block.hash) || !receipt.status() {
            return Ok(Inclusion::NotCanonical);
        }
        let Some(log) = receipt.inner.logs().iter().find(|l| l.log_index == Some(u64::from(id.index))) else {
            return Ok(Inclusion::NotCanonical);
        };
        if log.address() != self.config.bridge
            || decode_burn(self.config.chain_id, log.topics(), &log.data().data).as_ref()
                != Ok(&observed.attestation.kind)
        {
            return Ok(Inclusion::NotCanonical);
        }
        // A node may serve receipts of blocks it has since reorged out: the block at
        // that height must still be the one.
        let head = self.endpoints.head().await?;
        match self.block(BlockNumberOrTag::Number(observed.block.height)).await? {
            Some(b) if b.hash.0 == observed.block.hash => {
                Ok(Inclusion::Included { confirmations: head.saturating_sub(observed.block.height).saturating_add(1) })
            }
            _ => Ok(Inclusion::NotCanonical),
        }
    }

    /// The bridge address this source reads.
    pub fn bridge(&self) -> Address {
        self.config.bridge
    }
}

#[async_trait]
impl ChainSource for EvmSource {
    fn chain(&self) -> ChainId {
        self.config.chain_id
    }

    async fn heads(&mut self) -> Result<ChainHeads, AdapterError> {
        Ok(self.heads_inner().await?)
    }

    #[instrument(skip_all, fields(chain = %self.config.name))]
    async fn poll(&mut self) -> Result<PollOutcome, AdapterError> {
        Ok(self.poll_inner().await?)
    }

    async fn recheck(&mut self, observed: &Observed) -> Result<Inclusion, AdapterError> {
        Ok(self.recheck_inner(observed).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(height: u64, tag: u8) -> BlockRef {
        BlockRef { height, hash: [tag; 32] }
    }

    fn id(i: u32) -> EventId {
        EventId::new(ChainId(1), TxHash([i as u8; 32]), i)
    }

    #[test]
    fn state_roundtrips_and_adopts_a_bare_cursor() {
        let mut s = ScanState::decode(ChainId(1), b(10, 1), &[]).unwrap();
        assert_eq!(s.anchors, vec![b(10, 1)]);
        s.record(id(1), b(12, 2));
        s.record(id(2), b(12, 2));
        s.advance(b(20, 3));
        let bytes = s.encode();
        let back = ScanState::decode(ChainId(1), b(20, 3), &bytes).unwrap();
        assert_eq!(back, s);
        assert!(back.contains(&id(1), &b(12, 2)));
        assert!(!back.contains(&id(1), &b(12, 9)));
        assert!(ScanState::decode(ChainId(1), b(15, 3), &bytes).is_err(), "cursor below the kept window");
        assert!(ScanState::decode(ChainId(1), b(20, 3), b"{nope").is_err());
        let other_version = String::from_utf8(bytes.clone()).unwrap().replace("\"v\":1", "\"v\":9");
        assert!(ScanState::decode(ChainId(1), b(20, 3), other_version.as_bytes()).is_err());
        // Compact: hashes in hex, not arrays of numbers.
        assert!(bytes.len() < 500, "{}", String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn state_is_bounded() {
        let mut s = ScanState::decode(ChainId(1), b(0, 0), &[]).unwrap();
        for h in 1..=(MAX_ANCHORS as u64 * 3) {
            s.record(id(h as u32), b(h * 10 - 5, h as u8));
            s.advance(b(h * 10, h as u8));
        }
        assert_eq!(s.anchors.len(), MAX_ANCHORS);
        let floor = s.anchors[0].height;
        assert!(s.reported.iter().all(|r| r.block.height > floor));
        assert_eq!(s.reported.len(), MAX_ANCHORS - 1);

        let mut s = ScanState::decode(ChainId(1), b(0, 0), &[]).unwrap();
        for i in 0..(MAX_REPORTED_EVENTS as u32 + 10) {
            s.record(id(i), b(1 + u64::from(i / 100), 1));
            if i % 100 == 99 {
                s.advance(b(1 + u64::from(i / 100), 1));
            }
        }
        s.advance(b(1000, 1));
        assert!(s.event_count() <= MAX_REPORTED_EVENTS);
    }
}
