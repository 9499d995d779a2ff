//! Releases: the API's release records (`rel/`, `paying/`, `unpayable/`), the release
//! book's change log (`book/`) and the chain's payments ledger (`onchain/`), all in
//! the `releases` column family.

use bitcoin::Txid;
use btcfi_chain_adapters::VaultSpend;
use btcfi_store::{Batch, Cf, Store, StoreError};
use btcfi_types::{EventId, TxHash};
use serde::{Deserialize, Serialize};

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
fn unpayable_key(event: &EventId) -> Vec<u8> {
    let mut k = b"unpayable/".to_vec();
    k.extend_from_slice(&event.to_bytes());
    k
}

const ONCHAIN_PREFIX: &[u8] = b"onchain/";

/// Key of a vault spend at depth (the chain's payments ledger), by txid.
fn onchain_key(txid: &TxHash) -> Vec<u8> {
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
fn paying_key(event: &EventId) -> Vec<u8> {
    let mut k = b"paying/".to_vec();
    k.extend_from_slice(&event.to_bytes());
    k
}

fn release_key(txid: &Txid) -> Vec<u8> {
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
const BOOK_PREFIX: &[u8] = b"book/";

/// Key of the release book's `seq`-th change.
fn book_key(seq: u64) -> Vec<u8> {
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
    Pinned { event: EventId },
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
            C::Pinned(event) => Self::Pinned { event: *event },
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
            Self::Pinned { event } => C::Pinned(*event),
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

/// Replaces the release book's log (`old`: the sequences it holds) with `changes`,
/// logged from sequence 0, in one synced write (a crash leaves the old log or the new,
/// never a mix). Returns the next sequence to log.
pub fn rewrite_book(store: &Store, old: &[u64], changes: &[crate::release::book::Change]) -> Result<u64, StoreError> {
    let mut b = Batch::new();
    for seq in old {
        b.delete(Cf::Releases, book_key(*seq));
    }
    // After the deletes, in the same batch: a put of a sequence deleted above stands.
    for (seq, c) in (0u64..).zip(changes) {
        b.put_json(Cf::Releases, book_key(seq), &BookChange::of(c))?;
    }
    store.commit(b)?;
    Ok(changes.len() as u64)
}

/// The record of release `txid`, if this node holds one.
pub fn get_release(store: &Store, txid: &Txid) -> Result<Option<ReleaseRecord>, StoreError> {
    store.get_json(Cf::Releases, release_key(txid))
}

/// Every release record this node holds.
pub fn all_releases(store: &Store) -> Result<Vec<ReleaseRecord>, StoreError> {
    super::all(store, Cf::Releases, b"rel/")
}

/// Marks certified peg-out `event` as one no release pays (now, or until it is put to
/// the relay policy again), with the reason the API shows.
pub fn put_unpayable(batch: &mut Batch, event: &EventId, reason: &str) -> Result<(), StoreError> {
    batch.put_json(Cf::Releases, unpayable_key(event), &UnpayableRecord { reason: reason.to_owned() })?;
    Ok(())
}

/// Clears the mark [`put_unpayable`] wrote: a release pays `event` again.
pub fn clear_unpayable(batch: &mut Batch, event: &EventId) {
    batch.delete(Cf::Releases, unpayable_key(event));
}

/// Why certified peg-out `event` is not paid, if it is marked so.
pub fn get_unpayable(store: &Store, event: &EventId) -> Result<Option<UnpayableRecord>, StoreError> {
    store.get_json(Cf::Releases, unpayable_key(event))
}

/// Logs change `seq` of the release book.
pub fn put_book_change(batch: &mut Batch, seq: u64, change: &crate::release::book::Change) -> Result<(), StoreError> {
    batch.put_json(Cf::Releases, book_key(seq), &BookChange::of(change))?;
    Ok(())
}

/// Records a vault spend at depth in the chain's payments ledger.
pub fn put_vault_spend(batch: &mut Batch, spend: &VaultSpend) -> Result<(), StoreError> {
    batch.put_json(Cf::Releases, onchain_key(&spend.txid), spend)?;
    Ok(())
}

/// Takes the vault spend `txid` out of the payments ledger (a reorg took it out of the
/// chain).
pub fn delete_vault_spend(batch: &mut Batch, txid: &TxHash) {
    batch.delete(Cf::Releases, onchain_key(txid));
}

/// The chain's payments ledger: every vault spend at depth.
pub fn vault_spends(store: &Store) -> Result<Vec<VaultSpend>, StoreError> {
    super::all(store, Cf::Releases, ONCHAIN_PREFIX)
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
            Change::Pinned(event),
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

    /// A rewritten log reads back as the changes it was given, in order, and nothing of
    /// the old log is left, however long it was.
    #[test]
    fn a_rewritten_book_log_holds_only_its_new_changes() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("store");
        let event = |i: u8| EventId::new(ChainId(31337), TxHash([i; 32]), 0);
        let mut b = btcfi_store::Batch::new();
        for i in 0..300u64 {
            put_book_change(&mut b, i, &Change::Reorged(event((i % 200) as u8))).expect("put");
        }
        store.commit(b).expect("commit");
        let old: Vec<u64> = book_changes(&store).expect("read").into_iter().map(|(s, _)| s).collect();
        let new = vec![Change::Reorged(event(1)), Change::Unreorged(event(2))];
        assert_eq!(rewrite_book(&store, &old, &new).expect("rewrite"), 2);
        let back = book_changes(&store).expect("read back");
        assert_eq!(back, vec![(0, new[0].clone()), (1, new[1].clone())]);
    }

    /// A stored change that does not decode is an error naming it, not a panic.
    #[test]
    fn a_corrupt_book_record_is_a_named_error() {
        let rec = BookChange::Dropped { txid: "not a txid".into() };
        let e = rec.change().expect_err("refused");
        assert!(e.to_string().contains("book record txid"), "{e}");
    }
}
