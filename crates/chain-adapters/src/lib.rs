//! Chain adapters: everything btcfi-node says to and hears from Bitcoin and the EVM chains.
//!
//! Two implementations of one trait family:
//! - [`bitcoin`] speaks Bitcoin Core JSON-RPC (`bitcoincore-rpc`): follows the best
//!   chain from a durable cursor, reports vault deposits at the configured depth,
//!   tracks the vault's UTXO set, estimates fees, broadcasts releases.
//! - [`evm`] speaks EVM JSON-RPC (`alloy`): scans bridge logs in bounded ranges up
//!   to the finalized block, fails over between endpoints, submits `mint`.
//!
//! A source turns what became final on its chain into [`ChainEvent`]s carrying the
//! canonical [`Attestation`] that validators vote on, and hands back a
//! [`Checkpoint`] for the caller to persist in the same write as the events: a restart
//! from that checkpoint neither repeats nor skips an event.
//!
//! Adapters never panic on what a node sends them: malformed responses are
//! [`AdapterError`]s, malformed bridge events are [`ChainEvent::Rejected`].
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

pub mod bitcoin;
mod config;
mod error;
pub mod evm;

pub use config::ChainsConfig;
pub use error::AdapterError;

use async_trait::async_trait;
use btcfi_types::{Attestation, ChainId, EventId, Sats, TxHash};
use serde::{Deserialize, Serialize};

/// A block by height and hash (hash in display byte order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlockRef {
    pub height: u64,
    pub hash: [u8; 32],
}

/// What a source persists between runs: the last block whose events were all
/// reported, plus adapter-specific state (opaque to the caller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub cursor: BlockRef,
    #[serde(default)]
    pub state: Vec<u8>,
}

/// A bridge event that reached finality on its source chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    pub attestation: Attestation,
    pub block: BlockRef,
}

/// Something on a source chain that looked like a bridge event but must never be
/// attested as one, kept so that it is visible to operators rather than silently
/// dropped (and, for Bitcoin, so that the node can refund it: see `refund_to`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub id: EventId,
    pub block: BlockRef,
    pub amount: Option<Sats>,
    pub reason: String,
    /// Where a refund of this payment would go: for a rejected Bitcoin vault payment, the
    /// scriptPubKey of the prevout of its transaction's first input, the one script the
    /// chain itself shows the payer controlling (a rejected memo names no Bitcoin
    /// address). `None` when that input is a coinbase or the node gave no prevout, and
    /// for EVM rejections. Reporting it promises nothing: whether a refund is payable is
    /// the node's decision.
    #[serde(default)]
    pub refund_to: Option<Vec<u8>>,
    /// Always `None` from adapters: filled by the node when it decides to refund; the
    /// attestation it certifies.
    #[serde(default)]
    pub refund: Option<Attestation>,
}

/// One output a vault spend pays outside the vault (a peg-out payment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendOutput {
    pub vout: u32,
    #[serde(with = "hex::serde")]
    pub script_pubkey: Vec<u8>,
    pub amount: Sats,
}

/// A final Bitcoin transaction that spends vault UTXOs (a release), with what it pays
/// outside the vault (change and OP_RETURN outputs are not listed). The chain's own
/// record of which payments the vault made, whatever the node's database remembers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultSpend {
    pub txid: TxHash,
    pub block: BlockRef,
    /// The vault UTXOs it spends.
    #[serde(default)]
    pub spent: Vec<::bitcoin::OutPoint>,
    pub payouts: Vec<SpendOutput>,
}

impl VaultSpend {
    /// Index of the [`EventId`] naming a vault spend, `(bitcoin, txid, u32::MAX)`: no
    /// output of a transaction can have it, so it never collides with a deposit's id.
    pub const EVENT_INDEX: u32 = u32::MAX;

    pub fn id(&self) -> EventId {
        EventId::new(ChainId::BITCOIN, self.txid, Self::EVENT_INDEX)
    }
}

/// What a source reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChainEvent {
    /// Final at the configured depth or tag; re-checked against the canonical chain.
    Observed(Observed),
    /// Final, but not a valid bridge event (bad memo, dust, undecodable log). A
    /// Bitcoin rejection that carries [`Rejected::refund_to`] is final at the depth its
    /// transaction's tier asks for, since a refund pays out of the vault.
    Rejected(Rejected),
    /// Final: the vault paid these outputs (Bitcoin only). Never attested; the node
    /// counts the payments so that no peg-out is paid twice even if it forgot a release.
    VaultSpend(VaultSpend),
    /// An event reported earlier whose block left the canonical chain. The caller
    /// must stop acting on it (and alert: this is a reorg deeper than finality).
    Reorged { id: EventId, block: BlockRef },
}

impl ChainEvent {
    pub fn id(&self) -> EventId {
        match self {
            ChainEvent::Observed(o) => o.attestation.event,
            ChainEvent::Rejected(r) => r.id,
            ChainEvent::VaultSpend(v) => v.id(),
            ChainEvent::Reorged { id, .. } => *id,
        }
    }

    /// What this event asks the validators to attest: an observed event's attestation,
    /// or the refund the node attached to a rejected deposit.
    pub fn attestation(&self) -> Option<&Attestation> {
        match self {
            ChainEvent::Observed(o) => Some(&o.attestation),
            ChainEvent::Rejected(r) => r.refund.as_ref(),
            ChainEvent::VaultSpend(_) | ChainEvent::Reorged { .. } => None,
        }
    }
}

/// Result of one poll: events in chain order and the checkpoint that follows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollOutcome {
    pub events: Vec<ChainEvent>,
    pub checkpoint: Checkpoint,
}

/// Heights a chain reports about itself (for heartbeats, metrics and readiness).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHeads {
    pub head: u64,
    pub finalized: u64,
}

/// Where an observed event stands when re-checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Inclusion {
    /// Still in the canonical chain at the same block, with this many confirmations.
    Included { confirmations: u64 },
    /// Its block is no longer canonical.
    NotCanonical,
}

/// The source side of a chain: yields finalized bridge events and re-checks them.
#[async_trait]
pub trait ChainSource: Send {
    fn chain(&self) -> ChainId;
    /// Current head and finalized heights.
    async fn heads(&mut self) -> Result<ChainHeads, AdapterError>;
    /// Scans from the checkpoint towards the finalized height (a bounded amount of
    /// work per call) and returns what became final plus the checkpoint after it.
    async fn poll(&mut self) -> Result<PollOutcome, AdapterError>;
    /// Re-checks that an observed event is still where it was seen.
    async fn recheck(&mut self, observed: &Observed) -> Result<Inclusion, AdapterError>;
}
