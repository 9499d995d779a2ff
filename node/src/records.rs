//! The store schema of what the signing side keeps: signed mints, releases and their
//! indexes, the chain's payments ledger, and the keys each lives under.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use bitcoin::Txid;
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

/// Prefix of the mint book's signed batches: `mintsig/` + the 32-byte message.
pub(crate) const MINTSIG_PREFIX: &[u8] = b"mintsig/";

/// Key of the signed batch whose group-key message is `message`.
pub(crate) fn mintsig_key(message: &[u8]) -> Vec<u8> {
    [MINTSIG_PREFIX, message].concat()
}

/// A batch of mints the group key signed, as the mint book persists it
/// ([`btcfi_mint::Change::Signed`]): the proposal in its wire form and the signature's
/// words, in hex. The mint book is restored from these, the certified attestations and
/// the relay records; the API serves each mint's [`SignedRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintSigRecord {
    pub proposal: String,
    pub rx: String,
    pub ry: String,
    pub z: String,
}

impl MintSigRecord {
    pub fn of(proposal: &btcfi_mint::BatchProposal, s: &btcfi_signer::evm::EvmSignature) -> Self {
        let word = |w: alloy::primitives::U256| hex::encode(w.to_be_bytes::<32>());
        Self { proposal: hex::encode(proposal.encode()), rx: word(s.rx), ry: word(s.ry), z: word(s.z) }
    }

    /// The batch and its signature; an error names what does not decode.
    pub fn decode(&self) -> eyre::Result<(btcfi_mint::BatchProposal, btcfi_signer::evm::EvmSignature)> {
        let proposal = btcfi_mint::BatchProposal::decode(&hex::decode(&self.proposal)?)
            .map_err(|e| eyre::eyre!("signed batch record proposal: {e}"))?;
        let word = |h: &str| -> eyre::Result<alloy::primitives::U256> {
            let mut b = [0u8; 32];
            hex::decode_to_slice(h, &mut b).map_err(|e| eyre::eyre!("signed batch record word {h}: {e}"))?;
            Ok(alloy::primitives::U256::from_be_bytes(b))
        };
        Ok((proposal, btcfi_signer::evm::EvmSignature { rx: word(&self.rx)?, ry: word(&self.ry)?, z: word(&self.z)? }))
    }
}

/// Every batch of mints signed here, by message (what the mint book restores from).
pub fn mint_signatures(
    store: &Store,
) -> eyre::Result<Vec<(Vec<u8>, btcfi_mint::BatchProposal, btcfi_signer::evm::EvmSignature)>> {
    let mut out = Vec::new();
    for (k, raw) in store.scan_prefix(Cf::SigningAttempts, MINTSIG_PREFIX)? {
        let message = k.get(MINTSIG_PREFIX.len()..).unwrap_or_default().to_vec();
        let rec: MintSigRecord = serde_json::from_slice(&raw)?;
        let (proposal, signature) = rec.decode()?;
        out.push((message, proposal, signature));
    }
    Ok(out)
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
    /// Never signed here and given up on: its peg-outs go into another release.
    Expired,
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
    /// Its network fee was counted as paid (`btcfi_vault_fees_paid_sats_total`): once,
    /// however often a reorg takes it out of the chain and back.
    #[serde(default)]
    pub fee_counted: bool,
}

impl ReleaseRecord {
    /// The record of release `p`, accepted from `proposer` at `created_ms` and being
    /// signed, replacing `replaces` if it does.
    pub(crate) fn signing(
        p: &crate::release::Proposal,
        proposer: usize,
        created_ms: u64,
        peg_out_fee: btcfi_types::Sats,
        replaces: Option<&Txid>,
    ) -> Self {
        let vsize = crate::release::signed_vsize(&p.tx);
        Self {
            txid: p.txid().to_string(),
            proposal: hex::encode(p.encode()),
            payouts: p.payouts.clone(),
            status: ReleaseStatus::Signing,
            signatures: vec![None; p.tx.input.len()],
            fee_sats: p.fee(),
            fee_rate_sat_per_vb: p.fee() / vsize.max(1),
            peg_out_fee_sats: peg_out_fee.0,
            proposer,
            created_ms,
            broadcast_ms: None,
            confirmations: 0,
            replaces: replaces.map(ToString::to_string),
            fee_counted: false,
        }
    }
}

/// Puts `rec` into `batch` and, in the same batch, the index from each of its payouts
/// to the releases paying it (so the API finds them without a scan).
pub(crate) fn put_release(store: &Store, batch: &mut btcfi_store::Batch, rec: &ReleaseRecord) -> eyre::Result<()> {
    let mut key = b"rel/".to_vec();
    key.extend_from_slice(rec.txid.as_bytes());
    batch.put_json(Cf::Releases, key, rec)?;
    for e in &rec.payouts {
        let mut paying: Vec<String> = store.get_json(Cf::Releases, paying_key(e))?.unwrap_or_default();
        if !paying.contains(&rec.txid) {
            paying.push(rec.txid.clone());
            batch.put_json(Cf::Releases, paying_key(e), &paying)?;
        }
    }
    Ok(())
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

/// Where the release book's changes are logged, in order: `book/` + sequence (u64 BE),
/// in the `releases` column family. [`crate::release::book::ReleaseBook::restore`]
/// replays them at start.
pub(crate) const BOOK_PREFIX: &[u8] = b"book/";

/// Key of the release book's `seq`-th change.
pub(crate) fn book_key(seq: u64) -> Vec<u8> {
    let mut k = BOOK_PREFIX.to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// A change of the release book ([`crate::release::book::Change`]) as stored: txids
/// and outpoints in their display form, transactions, proposals and signatures in hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum BookChange {
    Live { txid: String, proposer: usize, proposal: String, at: u64 },
    Shared { txid: String },
    Signed { txid: String, signatures: Vec<String> },
    Dropped { txid: String },
    Expired { txid: String },
    Spent { txid: String, spent: Vec<String>, payments: Vec<(String, u64)>, paid: Vec<EventId>, tx: Option<String> },
    Unspent { txid: String },
    Reorged { event: EventId },
    Unreorged { event: EventId },
    SetApart { event: EventId, reason: String, until: u64 },
}

impl BookChange {
    pub fn of(change: &crate::release::book::Change) -> Self {
        use crate::release::book::Change as C;
        let hex_tx = |tx: &bitcoin::Transaction| bitcoin::consensus::encode::serialize_hex(tx);
        match change {
            C::Live { txid, proposer, proposal, at } => Self::Live {
                txid: txid.to_string(),
                proposer: *proposer,
                proposal: hex::encode(proposal.encode()),
                at: *at,
            },
            C::Shared { txid } => Self::Shared { txid: txid.to_string() },
            C::Signed { txid, signatures } => Self::Signed {
                txid: txid.to_string(),
                signatures: signatures.iter().map(|s| hex::encode(s.serialize())).collect(),
            },
            C::Dropped { txid } => Self::Dropped { txid: txid.to_string() },
            C::Expired { txid } => Self::Expired { txid: txid.to_string() },
            C::Spent { spend, paid, tx } => Self::Spent {
                txid: spend.txid.to_string(),
                spent: spend.spent.iter().map(ToString::to_string).collect(),
                payments: spend.payments.iter().map(|(s, a)| (hex::encode(s.as_bytes()), a.0)).collect(),
                paid: paid.clone(),
                tx: tx.as_ref().map(hex_tx),
            },
            C::Unspent { txid } => Self::Unspent { txid: txid.to_string() },
            C::Reorged(event) => Self::Reorged { event: *event },
            C::Unreorged(event) => Self::Unreorged { event: *event },
            C::SetApart { event, reason, until } => {
                Self::SetApart { event: *event, reason: reason.clone(), until: *until }
            }
        }
    }

    /// The change this record stores; an error names what does not decode.
    pub fn change(&self) -> eyre::Result<crate::release::book::Change> {
        use crate::release::book::{Change as C, Spend};
        use bitcoin::{OutPoint, ScriptBuf, secp256k1::schnorr};
        let txid = |s: &str| s.parse::<Txid>().map_err(|e| eyre::eyre!("book record txid {s}: {e}"));
        Ok(match self {
            Self::Live { txid: t, proposer, proposal, at } => C::Live {
                txid: txid(t)?,
                proposer: *proposer,
                proposal: crate::release::Proposal::decode(&hex::decode(proposal)?)
                    .map_err(|e| eyre::eyre!("book record proposal: {e}"))?,
                at: *at,
            },
            Self::Shared { txid: t } => C::Shared { txid: txid(t)? },
            Self::Signed { txid: t, signatures } => C::Signed {
                txid: txid(t)?,
                signatures: signatures
                    .iter()
                    .map(|s| {
                        schnorr::Signature::from_slice(&hex::decode(s)?)
                            .map_err(|e| eyre::eyre!("book record signature: {e}"))
                    })
                    .collect::<eyre::Result<_>>()?,
            },
            Self::Dropped { txid: t } => C::Dropped { txid: txid(t)? },
            Self::Expired { txid: t } => C::Expired { txid: txid(t)? },
            Self::Spent { txid: t, spent, payments, paid, tx } => C::Spent {
                spend: Spend {
                    txid: txid(t)?,
                    spent: spent
                        .iter()
                        .map(|o| o.parse::<OutPoint>().map_err(|e| eyre::eyre!("book record outpoint {o}: {e}")))
                        .collect::<eyre::Result<_>>()?,
                    payments: payments
                        .iter()
                        .map(|(s, a)| Ok((ScriptBuf::from(hex::decode(s)?), btcfi_types::Sats(*a))))
                        .collect::<eyre::Result<_>>()?,
                },
                paid: paid.clone(),
                tx: match tx {
                    Some(h) => Some(
                        bitcoin::consensus::encode::deserialize_hex(h)
                            .map_err(|e| eyre::eyre!("book record transaction: {e}"))?,
                    ),
                    None => None,
                },
            },
            Self::Unspent { txid: t } => C::Unspent { txid: txid(t)? },
            Self::Reorged { event } => C::Reorged(*event),
            Self::Unreorged { event } => C::Unreorged(*event),
            Self::SetApart { event, reason, until } => {
                C::SetApart { event: *event, reason: reason.clone(), until: *until }
            }
        })
    }
}

/// Every change the release book logged, in order (what it restores from).
pub fn book_changes(store: &Store) -> eyre::Result<Vec<(u64, crate::release::book::Change)>> {
    let mut out = Vec::new();
    for (k, raw) in store.scan_prefix(Cf::Releases, BOOK_PREFIX)? {
        let seq = k
            .get(BOOK_PREFIX.len()..)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| eyre::eyre!("release book key of {} bytes", k.len()))?;
        let rec: BookChange = serde_json::from_slice(&raw)?;
        out.push((seq, rec.change()?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::{
        Proposal,
        book::{Change, Spend},
    };
    use bitcoin::{Amount, OutPoint, ScriptBuf, Transaction, TxIn, TxOut, hashes::Hash, secp256k1::schnorr};
    use btcfi_types::{ChainId, Sats};

    /// Every change the release book persists is stored and read back as it was, in
    /// order, from a real store.
    #[test]
    fn every_book_change_reads_back_as_it_was_written() {
        let prev = OutPoint { txid: Txid::from_byte_array([3; 32]), vout: 1 };
        let payee = ScriptBuf::from(vec![0x51, 0x20].into_iter().chain([9u8; 32]).collect::<Vec<u8>>());
        let tx = Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: vec![TxIn { previous_output: prev, ..TxIn::default() }],
            output: vec![TxOut { value: Amount::from_sat(40_000), script_pubkey: payee.clone() }],
        };
        let event = EventId::new(ChainId(31337), TxHash([5; 32]), 2);
        let proposal = Proposal {
            tx: tx.clone(),
            prevouts: vec![TxOut { value: Amount::from_sat(50_000), script_pubkey: payee.clone() }],
            payouts: vec![event],
        };
        let txid = proposal.txid();
        let sig = schnorr::Signature::from_slice(&[7u8; 64]).expect("64 bytes");
        let spend = Spend { txid, spent: vec![prev], payments: vec![(payee, Sats(40_000))] };
        let changes = vec![
            Change::Live { txid, proposer: 3, proposal, at: 1_234 },
            Change::Shared { txid },
            Change::Signed { txid, signatures: vec![sig] },
            Change::Spent { spend: spend.clone(), paid: vec![event], tx: Some(tx) },
            Change::Spent { spend, paid: vec![], tx: None },
            Change::Unspent { txid },
            Change::Dropped { txid },
            Change::Expired { txid },
            Change::Reorged(event),
            Change::Unreorged(event),
            Change::SetApart { event, reason: "dust".into(), until: 99 },
        ];
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("store");
        // Written out of key order: read back in sequence order, past one byte's range.
        for (i, c) in changes.iter().enumerate().rev() {
            let mut b = btcfi_store::Batch::new();
            b.put_json(Cf::Releases, book_key(i as u64 * 300), &BookChange::of(c)).expect("encode");
            store.commit(b).expect("commit");
        }
        let back = book_changes(&store).expect("read back");
        let seqs: Vec<u64> = back.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (0..changes.len() as u64).map(|i| i * 300).collect::<Vec<_>>());
        let back: Vec<Change> = back.into_iter().map(|(_, c)| c).collect();
        assert_eq!(back, changes);
    }

    /// A signed batch reads back as it was written, from a real store; a corrupt one is
    /// an error naming it.
    #[test]
    fn a_signed_batch_reads_back_as_it_was_written() {
        use btcfi_mint::{BatchProposal, Leaf};
        use btcfi_types::{EvmAddress, TxHash};
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("store");
        let leaf = |i: u8| Leaf {
            event: EventId::new(ChainId::BITCOIN, TxHash([i; 32]), 0),
            recipient: EvmAddress([i; 20]),
            amount: Sats(u64::from(i)),
        };
        let p = BatchProposal::new(5, vec![leaf(1), leaf(2)]);
        let sig = btcfi_signer::evm::EvmSignature {
            rx: alloy::primitives::U256::from(7u8),
            ry: alloy::primitives::U256::MAX,
            z: alloy::primitives::U256::from(9u8),
        };
        let mut b = btcfi_store::Batch::new();
        b.put_json(Cf::SigningAttempts, mintsig_key(&[3; 32]), &MintSigRecord::of(&p, &sig)).expect("put");
        store.commit(b).expect("commit");
        assert_eq!(mint_signatures(&store).expect("read"), vec![(vec![3; 32], p, sig)]);
        let bad = MintSigRecord { proposal: "00".into(), rx: String::new(), ry: String::new(), z: String::new() };
        assert!(bad.decode().expect_err("refused").to_string().contains("signed batch record"));
    }

    /// A stored change that does not decode is an error naming it, not a panic.
    #[test]
    fn a_corrupt_book_record_is_a_named_error() {
        let rec = BookChange::Dropped { txid: "not a txid".into() };
        let e = rec.change().expect_err("refused");
        assert!(e.to_string().contains("book record txid"), "{e}");
    }
}
