//! Pure block scanning: what a block does to the vault. No RPC here, so every rule is
//! unit-tested on hand-built blocks.

use crate::SpendOutput;
use bitcoin::{Block, OutPoint, ScriptBuf, Transaction, script::Instruction};
use btcfi_types::{DepositMemo, MemoError, Sats, TxHash};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An unspent output of the vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultUtxo {
    pub outpoint: OutPoint,
    pub amount: Sats,
    pub height: u64,
}

/// Why a vault output is not a valid deposit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    BelowMinimum {
        minimum: Sats,
    },
    MissingMemo,
    MultipleMemos,
    MalformedMemo(MemoError),
    /// The memo names a chain this validator has no bridge on.
    UnknownChain(u64),
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RejectReason::BelowMinimum { minimum } => write!(f, "below the minimum deposit of {minimum}"),
            RejectReason::MissingMemo => f.write_str("no OP_RETURN memo"),
            RejectReason::MultipleMemos => f.write_str("more than one OP_RETURN output"),
            RejectReason::MalformedMemo(e) => write!(f, "malformed memo: {e}"),
            RejectReason::UnknownChain(c) => write!(f, "the memo names chain {c}, which has no bridge here"),
        }
    }
}

/// A payment to the vault found in a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultPayment {
    pub txid: TxHash,
    pub vout: u32,
    pub amount: Sats,
    pub memo: Result<DepositMemo, RejectReason>,
}

/// Everything one block does to the vault.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockEffect {
    /// Payments from outside (deposit candidates), in block order.
    pub payments: Vec<VaultPayment>,
    pub created: Vec<VaultUtxo>,
    pub spent: Vec<VaultUtxo>,
    /// The vault's own transactions (releases): the vault UTXOs each spends and what
    /// it pays outside the vault.
    pub spends: Vec<(TxHash, Vec<OutPoint>, Vec<SpendOutput>)>,
}

/// Txid in display byte order (what explorers and `bitcoin-cli` print).
pub fn display_txid(txid: &bitcoin::Txid) -> TxHash {
    let mut b = bitcoin::hashes::Hash::to_byte_array(*txid);
    b.reverse();
    TxHash(b)
}

/// The single memo of a transaction, or why there is none.
fn memo_of(tx: &Transaction) -> Result<DepositMemo, RejectReason> {
    let mut found = None;
    for out in tx.output.iter().filter(|o| o.script_pubkey.is_op_return()) {
        if found.is_some() {
            return Err(RejectReason::MultipleMemos);
        }
        let mut data = Vec::new();
        for ins in out.script_pubkey.instructions().skip(1) {
            match ins {
                Ok(Instruction::PushBytes(p)) => data.extend_from_slice(p.as_bytes()),
                _ => return Err(RejectReason::MalformedMemo(MemoError::BadMagic)),
            }
        }
        found = Some(DepositMemo::parse(&data).map_err(RejectReason::MalformedMemo));
    }
    found.unwrap_or(Err(RejectReason::MissingMemo))
}

/// Applies `block` (at `height`) to the vault's UTXO set and returns what changed.
///
/// A transaction that spends a vault UTXO is the vault's own (a release): its outputs
/// back to the vault are change, not deposits.
pub fn scan_block(
    block: &Block,
    height: u64,
    vault: &ScriptBuf,
    min_deposit: Sats,
    utxos: &mut BTreeMap<OutPoint, VaultUtxo>,
) -> BlockEffect {
    let mut effect = BlockEffect::default();
    for tx in &block.txdata {
        let mut own = false;
        let mut spent = Vec::new();
        for input in &tx.input {
            if let Some(u) = utxos.remove(&input.previous_output) {
                own = true;
                spent.push(u.outpoint);
                effect.spent.push(u);
            }
        }
        let txid = tx.compute_txid();
        if own {
            let payouts = tx
                .output
                .iter()
                .enumerate()
                .filter(|(_, o)| o.script_pubkey != *vault && !o.script_pubkey.is_op_return())
                .filter_map(|(vout, o)| {
                    Some(SpendOutput {
                        vout: u32::try_from(vout).ok()?,
                        script_pubkey: o.script_pubkey.to_bytes(),
                        amount: Sats(o.value.to_sat()),
                    })
                })
                .collect();
            effect.spends.push((display_txid(&txid), spent, payouts));
        }
        let mut memo = None;
        for (vout, out) in tx.output.iter().enumerate() {
            if out.script_pubkey != *vault {
                continue;
            }
            let Ok(vout) = u32::try_from(vout) else { continue };
            let amount = Sats(out.value.to_sat());
            let utxo = VaultUtxo { outpoint: OutPoint { txid, vout }, amount, height };
            utxos.insert(utxo.outpoint, utxo);
            effect.created.push(utxo);
            if own {
                continue;
            }
            let memo = memo.get_or_insert_with(|| memo_of(tx)).clone();
            let memo =
                if amount < min_deposit { Err(RejectReason::BelowMinimum { minimum: min_deposit }) } else { memo };
            effect.payments.push(VaultPayment { txid: display_txid(&txid), vout, amount, memo });
        }
    }
    effect
}

/// Rejects the deposits whose memo names a destination chain not in `known` (the
/// chains with a bridge; empty: no check), so that they are refunded rather than
/// certified for a chain nobody can mint on.
pub fn reject_unknown_destinations(payments: &mut [VaultPayment], known: &[u64]) {
    if known.is_empty() {
        return;
    }
    for p in payments {
        if let Ok(m) = &p.memo
            && !known.contains(&m.dest_chain.0)
        {
            p.memo = Err(RejectReason::UnknownChain(m.dest_chain.0));
        }
    }
}

/// What each transaction paid the vault, summed over all its vault outputs in
/// `payments` (valid and rejected deposits alike). The vault's own change is never in
/// `payments`, so it never counts. This is the amount confirmation tiers apply to: a
/// deposit cannot dodge a tier by being split into outputs of one transaction.
///
/// The sum is checked; an overflow (impossible with real amounts) saturates, which
/// selects the deepest tier rather than a wrapped, small total.
pub fn paid_per_tx(payments: &[VaultPayment]) -> BTreeMap<TxHash, Sats> {
    let mut totals: BTreeMap<TxHash, Sats> = BTreeMap::new();
    for p in payments {
        let total = totals.entry(p.txid).or_default();
        *total = total.checked_add(p.amount).unwrap_or(Sats(u64::MAX));
    }
    totals
}

/// Reverts [`scan_block`]'s effect on the UTXO set (a block left the best chain, or it
/// could not be processed after all).
///
/// Spent outputs go back first and created ones leave last: an output both created and
/// spent within the block (a release spending an earlier release's change) must end up
/// absent, as it was before the block.
pub fn undo_block(created: &[VaultUtxo], spent: &[VaultUtxo], utxos: &mut BTreeMap<OutPoint, VaultUtxo>) {
    for u in spent {
        utxos.insert(u.outpoint, *u);
    }
    for u in created {
        utxos.remove(&u.outpoint);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::{
        Amount, TxIn, TxOut, absolute::LockTime, block::Header, hashes::Hash, script::PushBytesBuf,
        transaction::Version,
    };
    use btcfi_types::{ChainId, EvmAddress};

    fn vault() -> ScriptBuf {
        // The generator's x coordinate: a valid key nobody uses.
        let gx = hex::decode("79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798").unwrap();
        let x = bitcoin::XOnlyPublicKey::from_slice(&gx).unwrap();
        ScriptBuf::new_p2tr_tweaked(bitcoin::key::TweakedPublicKey::dangerous_assume_tweaked(x))
    }

    fn op_return(data: &[u8]) -> TxOut {
        let push = PushBytesBuf::try_from(data.to_vec()).unwrap();
        TxOut { value: Amount::ZERO, script_pubkey: ScriptBuf::new_op_return(push) }
    }

    fn tx(inputs: Vec<OutPoint>, outputs: Vec<TxOut>) -> Transaction {
        Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: inputs.into_iter().map(|p| TxIn { previous_output: p, ..Default::default() }).collect(),
            output: outputs,
        }
    }

    fn block(txdata: Vec<Transaction>) -> Block {
        Block {
            header: Header {
                version: bitcoin::block::Version::TWO,
                prev_blockhash: bitcoin::BlockHash::all_zeros(),
                merkle_root: bitcoin::TxMerkleNode::all_zeros(),
                time: 0,
                bits: bitcoin::CompactTarget::from_consensus(0),
                nonce: 0,
            },
            txdata,
        }
    }

    fn memo() -> DepositMemo {
        DepositMemo { dest_chain: ChainId(137), recipient: EvmAddress([9; 20]) }
    }

    #[test]
    fn a_memo_naming_a_chain_without_a_bridge_is_a_rejection() {
        let pay = |chain: u64| VaultPayment {
            txid: TxHash([chain as u8; 32]),
            vout: 0,
            amount: Sats(50_000),
            memo: Ok(DepositMemo {
                dest_chain: btcfi_types::ChainId(chain),
                recipient: btcfi_types::EvmAddress([1; 20]),
            }),
        };
        let mut payments = vec![pay(1), pay(137)];
        reject_unknown_destinations(&mut payments, &[]);
        assert!(payments.iter().all(|p| p.memo.is_ok()), "no list: no check");
        reject_unknown_destinations(&mut payments, &[1, 56]);
        assert!(payments[0].memo.is_ok());
        assert_eq!(payments[1].memo, Err(RejectReason::UnknownChain(137)));
    }

    #[test]
    fn deposit_change_and_rejections() {
        let v = vault();
        let mut utxos = BTreeMap::new();
        let pay = |sat| TxOut { value: Amount::from_sat(sat), script_pubkey: v.clone() };
        let good = tx(vec![], vec![pay(50_000), op_return(&memo().encode())]);
        let dust = tx(vec![], vec![op_return(&memo().encode()), pay(500)]);
        let none = tx(vec![], vec![pay(60_000)]);
        let bad = tx(vec![], vec![pay(60_000), op_return(b"BTCFI\x02")]);
        let two = tx(vec![], vec![pay(60_000), op_return(&memo().encode()), op_return(&memo().encode())]);
        let b = block(vec![good.clone(), dust, none, bad, two]);
        let e = scan_block(&b, 10, &v, Sats(1_000), &mut utxos);
        assert_eq!(e.payments.len(), 5);
        assert_eq!(e.payments[0].memo, Ok(memo()));
        assert_eq!(e.payments[0].amount, Sats(50_000));
        assert_eq!(e.payments[1].vout, 1);
        assert_eq!(e.payments[1].memo, Err(RejectReason::BelowMinimum { minimum: Sats(1_000) }));
        assert_eq!(e.payments[2].memo, Err(RejectReason::MissingMemo));
        assert_eq!(e.payments[3].memo, Err(RejectReason::MalformedMemo(MemoError::UnsupportedVersion(2))));
        assert_eq!(e.payments[4].memo, Err(RejectReason::MultipleMemos));
        assert_eq!(utxos.len(), 5, "every vault output is the vault's, valid deposit or not");

        // A release spends a vault UTXO and pays change back: not a deposit.
        let spent = OutPoint { txid: good.compute_txid(), vout: 0 };
        let release = tx(
            vec![spent],
            vec![TxOut { value: Amount::from_sat(40_000), script_pubkey: ScriptBuf::new() }, pay(9_000)],
        );
        let e2 = scan_block(&block(vec![release]), 11, &v, Sats(1_000), &mut utxos);
        assert!(e2.payments.is_empty());
        assert_eq!(e2.spent.len(), 1);
        // The release is the vault's own spend: its payment out is listed, not its change.
        assert_eq!(e2.spends.len(), 1);
        assert_eq!(e2.spends[0].1, vec![spent]);
        assert_eq!(e2.spends[0].2, vec![SpendOutput { vout: 0, script_pubkey: vec![], amount: Sats(40_000) }]);
        assert_eq!(e2.created.len(), 1);
        assert_eq!(utxos.len(), 5);
        undo_block(&e2.created, &e2.spent, &mut utxos);
        assert!(utxos.contains_key(&spent));
        assert_eq!(utxos.len(), 5);
    }

    #[test]
    fn undo_is_exact_for_an_output_created_and_spent_in_the_same_block() {
        let v = vault();
        let pay = |sat| TxOut { value: Amount::from_sat(sat), script_pubkey: v.clone() };
        let mut utxos = BTreeMap::new();
        let deposit = tx(vec![], vec![pay(50_000), op_return(&memo().encode())]);
        scan_block(&block(vec![deposit.clone()]), 10, &v, Sats(1_000), &mut utxos);
        let before = utxos.clone();
        // Release 1 spends the deposit and pays change to the vault; release 2, in the same
        // block, spends that change.
        let r1 = tx(
            vec![OutPoint { txid: deposit.compute_txid(), vout: 0 }],
            vec![TxOut { value: Amount::from_sat(10_000), script_pubkey: ScriptBuf::new() }, pay(39_000)],
        );
        let r2 = tx(
            vec![OutPoint { txid: r1.compute_txid(), vout: 1 }],
            vec![TxOut { value: Amount::from_sat(10_000), script_pubkey: ScriptBuf::new() }, pay(28_000)],
        );
        let e = scan_block(&block(vec![r1, r2.clone()]), 11, &v, Sats(1_000), &mut utxos);
        assert_eq!(utxos.keys().copied().collect::<Vec<_>>(), vec![OutPoint { txid: r2.compute_txid(), vout: 1 }]);
        undo_block(&e.created, &e.spent, &mut utxos);
        assert_eq!(utxos, before, "the change created and spent within the block is gone again");
    }
}
