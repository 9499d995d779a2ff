//! The store schema of what the signing side keeps: signed mints, releases and their
//! indexes, the chain's payments ledger, and the keys each lives under.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use bitcoin::{Txid, hashes::Hash};
use btcfi_store::{Cf, Store};
use btcfi_types::{EventId, TxHash};
use serde::{Deserialize, Serialize};

/// A signed mint, stored under `sig/` + event id and served by the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedRecord {
    pub chain_id: u64,
    pub bridge: String,
    pub contract_event_id: String,
    pub recipient: String,
    pub amount_sats: u64,
    /// The 32-byte message the contract verifies (`mintMessage`).
    pub message: String,
    pub rx: String,
    pub ry: String,
    pub z: String,
    /// Validators eligible in the attempt that produced the signature.
    pub signers: Vec<String>,
    pub attempt: u32,
    pub signed_at_ms: u64,
    /// Signed as part of a batch: `message` is then the batch message and (rx, ry, z)
    /// its signature, and this leaf mints with its proof under the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchRef>,
}

/// Where a batch-signed mint sits in its batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchRef {
    /// `0x` + the Merkle root the group key signed.
    pub root: String,
    /// The leaf's proof, bottom up (`0x` + 32 bytes each).
    pub proof: Vec<String>,
    /// Mints in the batch.
    pub leaves: usize,
}

pub fn signed_key(event: &EventId) -> Vec<u8> {
    let mut k = b"sig/".to_vec();
    k.extend_from_slice(&event.to_bytes());
    k
}

/// Where a release stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseStatus {
    Signing,
    Broadcast,
    /// A replacement (RBF) was accepted; this one may still confirm instead.
    Replaced,
    Confirmed,
    /// Another release spending one of its inputs confirmed: it never will.
    Conflicted,
}

/// A release this node validated, under `rel/` + txid in the `releases` column family.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub txid: String,
    /// The encoded proposal (hex).
    pub proposal: String,
    pub payouts: Vec<EventId>,
    pub status: ReleaseStatus,
    /// FROST signature per input (hex), once signed.
    pub signatures: Vec<Option<String>>,
    pub fee_sats: u64,
    pub fee_rate_sat_per_vb: u64,
    pub peg_out_fee_sats: u64,
    pub proposer: usize,
    pub created_ms: u64,
    pub broadcast_ms: Option<u64>,
    pub confirmations: u64,
    /// The release this one replaced (RBF).
    pub replaces: Option<String>,
}

/// A certified peg-out that can never be paid, under [`unpayable_key`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnpayableRecord {
    pub reason: String,
}

/// Key of the [`UnpayableRecord`] of a certified peg-out.
pub fn unpayable_key(event: &EventId) -> Vec<u8> {
    let mut k = b"unpayable/".to_vec();
    k.extend_from_slice(&event.to_bytes());
    k
}

/// Drops a release's stored signatures so that its inputs are signed again.
pub(crate) fn forget_signatures(rec: &mut ReleaseRecord) {
    rec.signatures.iter_mut().for_each(|s| *s = None);
    rec.status = ReleaseStatus::Signing;
}

pub(crate) const ONCHAIN_PREFIX: &[u8] = b"onchain/";

/// Key of a vault spend at depth (the chain's payments ledger), by txid.
pub fn onchain_key(txid: &TxHash) -> Vec<u8> {
    let mut k = ONCHAIN_PREFIX.to_vec();
    k.extend_from_slice(&txid.0);
    k
}

/// A display-order txid (as [`TxHash`] holds it) in the internal byte order.
pub(crate) fn internal_order(txid: &TxHash) -> [u8; 32] {
    let mut b = txid.0;
    b.reverse();
    b
}

/// The display-order [`TxHash`] of a txid.
pub(crate) fn display_txid(txid: &Txid) -> TxHash {
    let mut b = txid.to_byte_array();
    b.reverse();
    TxHash(b)
}

/// Key of the list of releases (txids) that pay `event`.
pub(crate) fn paying_key(event: &EventId) -> Vec<u8> {
    let mut k = b"paying/".to_vec();
    k.extend_from_slice(&event.to_bytes());
    k
}

pub(crate) fn release_key(txid: &Txid) -> Vec<u8> {
    let mut k = b"rel/".to_vec();
    k.extend_from_slice(txid.to_string().as_bytes());
    k
}

/// This node's record of a release paying `event`, if any (newest first).
pub fn release_of(store: &Store, event: &EventId) -> eyre::Result<Option<ReleaseRecord>> {
    let mut found: Option<ReleaseRecord> = None;
    let paying: Vec<String> = store.get_json(Cf::Releases, paying_key(event))?.unwrap_or_default();
    for txid in paying {
        let mut key = b"rel/".to_vec();
        key.extend_from_slice(txid.as_bytes());
        let Some(rec) = store.get_json::<ReleaseRecord>(Cf::Releases, key)? else { continue };
        if rec.payouts.contains(event) {
            let better = match &found {
                None => true,
                Some(f) => {
                    rec.status == ReleaseStatus::Confirmed
                        || (f.status != ReleaseStatus::Confirmed && rec.created_ms > f.created_ms)
                }
            };
            if better {
                found = Some(rec);
            }
        }
    }
    Ok(found)
}
