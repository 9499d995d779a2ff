//! The Bitcoin chain below the validators, as far as the vault's releases need it:
//! blocks, a mempool that enforces standardness, key-path signatures and replace-by-fee
//! (a conflicting transaction must pay more in all and per vbyte), and reorgs of the
//! blocks not yet at depth (their transactions back to the mempool, or lost).
//!
//! A vault spend is reported to the validators once it is `DEPTH` blocks deep. A reorg
//! takes out up to `DEPTH - 1` blocks at once, every block not yet at depth, never one
//! that is: what was reported stays.

use bitcoin::{
    Amount, OutPoint, ScriptBuf, Transaction, TxOut, Txid, XOnlyPublicKey,
    secp256k1::{Message, Secp256k1, schnorr},
};
use btcfi_release::{Policy, is_standard_payout, sighashes, signed_vsize};
use btcfi_types::Sats;
use std::collections::{BTreeMap, BTreeSet};

/// Confirmations at which a vault spend (or a UTXO) counts.
pub const DEPTH: usize = 3;
/// What each peg-out pays the vault's fees with: it is paid its amount less this.
pub const PEG_OUT_FEE: u64 = 2_000;
/// The fee rates the validators may pay, sat/vB.
pub const FLOOR_SAT_PER_VB: u64 = 1;
pub const CEILING_SAT_PER_VB: u64 = 100;

/// The release policy every simulated validator runs with.
pub fn policy(vault: ScriptBuf) -> Policy {
    Policy::new(vault, Sats(PEG_OUT_FEE), FLOOR_SAT_PER_VB, CEILING_SAT_PER_VB)
}

/// Why the mempool refused a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    MissingInput(OutPoint),
    BadSignature(usize),
    NonStandard(usize),
    Dust(usize),
    FeeTooLow,
    /// Conflicts with a mempool transaction and does not pay enough more to replace it.
    Conflict(Txid),
}

#[derive(Debug, Clone)]
pub struct Chain {
    pub policy: Policy,
    key: XOnlyPublicKey,
    /// Vault outputs that exist from the start, and deposits (final once added).
    funds: BTreeMap<OutPoint, TxOut>,
    /// The best chain's blocks (of vault spends) on top of the funds.
    pub blocks: Vec<Vec<Transaction>>,
    mempool: BTreeMap<Txid, Transaction>,
    /// Blocks whose transactions were reported at depth.
    reported: usize,
    /// The fee of every transaction the mempool took.
    pub fees: BTreeMap<Txid, u64>,
    pub replaced: u64,
    pub reorgs: u64,
    pub refused: u64,
}

impl Chain {
    pub fn new(policy: Policy, key: XOnlyPublicKey) -> Self {
        Self {
            policy,
            key,
            funds: BTreeMap::new(),
            blocks: Vec::new(),
            mempool: BTreeMap::new(),
            fees: BTreeMap::new(),
            reported: 0,
            replaced: 0,
            reorgs: 0,
            refused: 0,
        }
    }

    /// A vault output at depth: a deposit, or the vault's funds at the start.
    pub fn fund(&mut self, outpoint: OutPoint, value: u64) {
        let out = TxOut { value: Amount::from_sat(value), script_pubkey: self.policy.vault_script.clone() };
        self.funds.insert(outpoint, out);
    }

    /// Blocks whose transactions are `DEPTH` deep.
    fn deep(&self) -> usize {
        (self.blocks.len() + 1).saturating_sub(DEPTH)
    }

    /// The unspent vault outputs after the first `blocks` blocks.
    fn utxos_after(&self, blocks: usize) -> BTreeMap<OutPoint, TxOut> {
        let mut set = self.funds.clone();
        for tx in self.blocks.iter().take(blocks).flatten() {
            for i in &tx.input {
                set.remove(&i.previous_output);
            }
            let txid = tx.compute_txid();
            for (vout, o) in tx.output.iter().enumerate() {
                if o.script_pubkey == self.policy.vault_script {
                    set.insert(OutPoint { txid, vout: vout as u32 }, o.clone());
                }
            }
        }
        set
    }

    /// The vault's UTXOs at depth, as a validator's adapter reports them.
    pub fn utxos_at_depth(&self) -> BTreeMap<OutPoint, Sats> {
        self.utxos_after(self.deep()).into_iter().map(|(op, o)| (op, Sats(o.value.to_sat()))).collect()
    }

    /// Every vault spend at depth, oldest first.
    pub fn spends_at_depth(&self) -> Vec<Transaction> {
        self.blocks.iter().take(self.deep()).flatten().cloned().collect()
    }

    pub fn mempool_inputs(&self) -> BTreeSet<OutPoint> {
        self.mempool.values().flat_map(|t| t.input.iter().map(|i| i.previous_output)).collect()
    }

    /// `sendrawtransaction`: the checks a node's mempool makes, then RBF.
    pub fn submit(&mut self, tx: &Transaction) -> Result<(), Refusal> {
        let r = self.check(tx);
        if r.is_err() {
            self.refused += 1;
        }
        r
    }

    /// `testmempoolaccept` of an unsigned release, as a validator's driver reads it: a
    /// refusal only for what the relay policy says of the outputs (what signatures
    /// would not change). Nothing is kept.
    pub fn test_accept(&self, tx: &Transaction) -> Result<(), Refusal> {
        for (k, o) in tx.output.iter().enumerate() {
            if !is_standard_payout(&o.script_pubkey) {
                return Err(Refusal::NonStandard(k));
            }
            if o.value.to_sat() < self.policy.dust_limit(&o.script_pubkey) {
                return Err(Refusal::Dust(k));
            }
        }
        Ok(())
    }

    fn check(&mut self, tx: &Transaction) -> Result<(), Refusal> {
        let txid = tx.compute_txid();
        if self.mempool.contains_key(&txid) || self.blocks.iter().flatten().any(|t| t.compute_txid() == txid) {
            return Ok(());
        }
        let utxos = self.utxos_after(self.blocks.len());
        let mut prevouts = Vec::new();
        for i in &tx.input {
            prevouts.push(utxos.get(&i.previous_output).cloned().ok_or(Refusal::MissingInput(i.previous_output))?);
        }
        let hashes = sighashes(tx, &prevouts).map_err(|_| Refusal::BadSignature(0))?;
        let secp = Secp256k1::verification_only();
        for (k, (input, hash)) in tx.input.iter().zip(&hashes).enumerate() {
            let sig = match input.witness.iter().collect::<Vec<_>>().as_slice() {
                [s] => schnorr::Signature::from_slice(s).map_err(|_| Refusal::BadSignature(k))?,
                _ => return Err(Refusal::BadSignature(k)),
            };
            secp.verify_schnorr(&sig, &Message::from_digest(*hash), &self.key).map_err(|_| Refusal::BadSignature(k))?;
        }
        for (k, o) in tx.output.iter().enumerate() {
            if !is_standard_payout(&o.script_pubkey) {
                return Err(Refusal::NonStandard(k));
            }
            if o.value.to_sat() < self.policy.dust_limit(&o.script_pubkey) {
                return Err(Refusal::Dust(k));
            }
        }
        let fee = fee_of(&prevouts, tx).ok_or(Refusal::FeeTooLow)?;
        let vsize = signed_vsize(tx).max(1);
        if fee < vsize {
            return Err(Refusal::FeeTooLow);
        }
        // Replace-by-fee: more in all (by at least its own size at 1 sat/vB), and more
        // per vbyte, than every transaction it conflicts with.
        let spends: BTreeSet<OutPoint> = tx.input.iter().map(|i| i.previous_output).collect();
        let conflicts: Vec<Txid> = self
            .mempool
            .iter()
            .filter(|(_, t)| t.input.iter().any(|i| spends.contains(&i.previous_output)))
            .map(|(id, _)| *id)
            .collect();
        let mut replaced_fee = 0u64;
        for c in &conflicts {
            let old = &self.mempool[c];
            let old_prevouts: Option<Vec<TxOut>> =
                old.input.iter().map(|i| utxos.get(&i.previous_output).cloned()).collect();
            let old_fee = old_prevouts.and_then(|p| fee_of(&p, old)).unwrap_or(0);
            let old_vsize = signed_vsize(old).max(1);
            if fee * old_vsize <= old_fee * vsize {
                return Err(Refusal::Conflict(*c));
            }
            replaced_fee += old_fee;
        }
        if !conflicts.is_empty() && fee < replaced_fee + vsize {
            return Err(Refusal::Conflict(conflicts[0]));
        }
        for c in conflicts {
            self.mempool.remove(&c);
            self.replaced += 1;
        }
        self.mempool.insert(txid, tx.clone());
        self.fees.insert(txid, fee);
        Ok(())
    }

    /// Mines the mempool into a block (the transactions it holds never conflict).
    /// Returns the transactions that reached depth with it.
    pub fn mine(&mut self) -> Vec<Transaction> {
        let block: Vec<Transaction> = std::mem::take(&mut self.mempool).into_values().collect();
        self.blocks.push(block);
        // A reorged tip never reached depth: what reaches it now was not reported yet.
        let deep = self.deep();
        let fresh = self.blocks.iter().take(deep).skip(self.reported).flatten().cloned().collect();
        self.reported = self.reported.max(deep);
        fresh
    }

    /// A reorg of the `blocks` top blocks, or of as many as are not at depth yet: their
    /// transactions go back to the mempool unless `lose` (a mempool that forgot them:
    /// the validators broadcast again). How many blocks it took out.
    pub fn reorg(&mut self, blocks: usize, lose: bool) -> usize {
        let mut taken = 0;
        // Never a block that reached depth (what was reported stays).
        while taken < blocks && self.blocks.len() > self.reported {
            let Some(tip) = self.blocks.pop() else { break };
            taken += 1;
            if !lose {
                for tx in tip {
                    self.mempool.insert(tx.compute_txid(), tx);
                }
            }
        }
        if taken > 0 {
            self.reorgs += 1;
        }
        taken
    }
}

/// Inputs minus outputs, if the outputs do not exceed the inputs.
pub fn fee_of(prevouts: &[TxOut], tx: &Transaction) -> Option<u64> {
    let inp: u64 = prevouts.iter().map(|o| o.value.to_sat()).sum();
    let out: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
    inp.checked_sub(out)
}
