//! Bitcoin releases: certified peg-outs paid from the vault in one Taproot transaction.
//! Pure logic (no RPC, no store, no clock): the node's `threshold` module drives it.
//!
//! A *proposal* is an unsigned transaction plus the outputs it spends and the peg-outs
//! it pays. One validator proposes (the one ranked first for the oldest unpaid peg-out,
//! with the others taking over after `rank × takeover`); every signer validates the
//! proposal against its own view before it signs anything ([`validate`]):
//!
//! - every input is a vault UTXO this node sees at depth, spent with its exact amount
//!   and script, and not already spent by another release this node signs;
//! - the outputs are exactly the payouts, in event-id order, each paying the attested
//!   script `amount - peg_out_fee`, plus at most one change output to the vault;
//! - every payout is a peg-out this node certified, not paid or promised elsewhere
//!   (a replacement must spend the very same inputs, so at most one can confirm);
//! - the fee rate lies within the configured bounds, and at most `max_fee_multiple`
//!   times this signer's own fee estimate (one validator cannot give the vault to the
//!   miners);
//! - it spends no more inputs than the payouts and fee need, plus those it must spend
//!   to conflict with the live releases it supersedes, plus at most
//!   `consolidation_inputs`;
//! - every payout is relayed by Bitcoin nodes (a standard template, at or above the dust
//!   limit of its own output type at `dust_relay_sat_per_kvb`), and the whole
//!   transaction is within the standard weight.
//!
//! Then one `btc` signing session per input signs its BIP341 key-path sighash
//! (SIGHASH_DEFAULT). With every signature in, any validator assembles the witnesses,
//! checks them, and broadcasts (idempotent). The release is followed to the configured
//! depth, and replaced (RBF, same inputs and payouts, higher fee from the change) when
//! it stays unconfirmed past `rbf_after_secs`.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use bitcoin::{
    Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness,
    absolute::LockTime,
    consensus::{deserialize, serialize},
    secp256k1::schnorr,
    sighash::{Prevouts, SighashCache, TapSighashType},
    transaction::Version,
};
use btcfi_types::{EventId, Sats};
use std::collections::{BTreeMap, BTreeSet};

pub mod book;
mod error;
mod turns;
pub use error::ReleaseError;
pub use turns::Turns;

/// Payload tag of a release proposal (beside the session tags of the node's signing
/// driver).
pub const TAG_RELEASE: u8 = 3;
/// Version byte of an encoded [`Proposal`].
pub const PROPOSAL_VERSION: u8 = 1;
/// Bitcoin Core's default `-dustrelayfee`, in sat per 1,000 vB.
pub const DEFAULT_DUST_RELAY_SAT_PER_KVB: u64 = 3_000;
/// A proposal may pay at most this multiple of the signer's own fee estimate.
pub const DEFAULT_MAX_FEE_MULTIPLE: u64 = 2;
/// Inputs a proposal may spend beyond those its payouts and fee need.
pub const DEFAULT_CONSOLIDATION_INPUTS: usize = 2;
/// Largest standard transaction weight (Bitcoin Core's `MAX_STANDARD_TX_WEIGHT`).
pub const MAX_STANDARD_WEIGHT: u64 = bitcoin::policy::MAX_STANDARD_TX_WEIGHT as u64;
/// Most payouts in one release.
pub const MAX_PAYOUTS: usize = 200;
/// Most inputs in one release.
pub const MAX_INPUTS: usize = 200;

/// One certified peg-out to pay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payout {
    pub event: EventId,
    pub amount: Sats,
    pub script: ScriptBuf,
}

/// What a release must respect.
#[derive(Debug, Clone)]
pub struct Policy {
    pub vault_script: ScriptBuf,
    pub peg_out_fee: Sats,
    pub floor_sat_per_vb: u64,
    pub ceiling_sat_per_vb: u64,
    /// The dust relay fee that sets each output type's dust limit (sat per 1,000 vB).
    pub dust_relay_sat_per_kvb: u64,
    /// A proposal's fee rate may be at most this multiple of the signer's own estimate.
    pub max_fee_multiple: u64,
    /// Inputs beyond those needed that a proposal may spend (consolidation).
    pub consolidation_inputs: usize,
}

impl Policy {
    /// A policy with Bitcoin Core's default dust relay fee and the default fee band and
    /// consolidation allowance.
    pub fn new(vault_script: ScriptBuf, peg_out_fee: Sats, floor_sat_per_vb: u64, ceiling_sat_per_vb: u64) -> Self {
        Self {
            vault_script,
            peg_out_fee,
            floor_sat_per_vb,
            ceiling_sat_per_vb,
            dust_relay_sat_per_kvb: DEFAULT_DUST_RELAY_SAT_PER_KVB,
            max_fee_multiple: DEFAULT_MAX_FEE_MULTIPLE,
            consolidation_inputs: DEFAULT_CONSOLIDATION_INPUTS,
        }
    }

    /// The dust limit of an output to `script`: the smallest value Bitcoin nodes relay
    /// (Bitcoin Core's `GetDustThreshold`: what spending it would cost at the dust relay
    /// fee; P2PKH 546, P2SH 540, P2WPKH 294, P2WSH and P2TR 330 sat at the default).
    pub fn dust_limit(&self, script: &ScriptBuf) -> u64 {
        let spend: u64 = if script.is_witness_program() { 32 + 4 + 1 + 107 / 4 + 4 } else { 32 + 4 + 1 + 107 + 4 };
        // TxOut: value (8) + compact-size length + script.
        let len = script.len() as u64;
        let prefix = if len < 0xfd { 1 } else { 3 };
        let size = spend.saturating_add(8).saturating_add(prefix).saturating_add(len);
        size.saturating_mul(self.dust_relay_sat_per_kvb) / 1_000
    }

    /// The highest fee rate a proposal may pay when this signer estimates `estimate`
    /// sat/vB. `None` (a signer that never read an estimate): the configured ceiling
    /// alone bounds it, rather than refusing every honest proposal.
    pub fn band_ceiling(&self, estimate: Option<u64>) -> u64 {
        match estimate {
            Some(e) => {
                e.max(self.floor_sat_per_vb).saturating_mul(self.max_fee_multiple.max(1)).min(self.ceiling_sat_per_vb)
            }
            None => self.ceiling_sat_per_vb,
        }
    }
}

/// An unsigned release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub tx: Transaction,
    /// The outputs spent, in input order.
    pub prevouts: Vec<TxOut>,
    /// The peg-outs paid, in output order.
    pub payouts: Vec<EventId>,
}

/// What a peg-out payment looks like on chain: the script and the value it receives.
pub type PaymentClass = (ScriptBuf, u64);

/// The on-chain class of a payout, if it is payable.
pub fn class_of(p: &Payout, policy: &Policy) -> Option<PaymentClass> {
    payout_value(p, policy).map(|v| (p.script.clone(), v))
}

/// How many more payments of each class the vault may make: certified peg-outs of the
/// class, minus final payments of it on chain, minus peg-outs of it promised to
/// releases not yet on chain (`promised`). Payments of one class are interchangeable
/// (same script, same value), so this bound holds whatever the database remembers of
/// which release paid which peg-out: the chain itself limits what is paid.
pub fn payment_budget(
    certified: &BTreeMap<EventId, Payout>,
    on_chain: &BTreeMap<PaymentClass, usize>,
    promised: &BTreeSet<EventId>,
    policy: &Policy,
) -> BTreeMap<PaymentClass, usize> {
    let mut budget: BTreeMap<PaymentClass, i64> = BTreeMap::new();
    for (e, p) in certified {
        let Some(c) = class_of(p, policy) else { continue };
        let b = budget.entry(c).or_default();
        *b += 1;
        if promised.contains(e) {
            *b -= 1;
        }
    }
    for (c, n) in on_chain {
        if let Some(b) = budget.get_mut(c) {
            *b -= i64::try_from(*n).unwrap_or(i64::MAX);
        }
    }
    budget.into_iter().map(|(c, b)| (c, usize::try_from(b).unwrap_or(0))).collect()
}

/// Refuses `p` if it pays some class more often than [`payment_budget`] allows; the
/// peg-outs `p` itself pays (and the release it replaces pays) are not in `promised`.
pub fn check_budget(
    p: &Proposal,
    certified: &BTreeMap<EventId, Payout>,
    on_chain: &BTreeMap<PaymentClass, usize>,
    promised: &BTreeSet<EventId>,
    policy: &Policy,
) -> Result<(), ReleaseError> {
    let mut budget = payment_budget(certified, on_chain, promised, policy);
    for e in &p.payouts {
        let class = certified.get(e).and_then(|c| class_of(c, policy)).ok_or(ReleaseError::UnknownPayout(*e))?;
        match budget.get_mut(&class) {
            Some(b) if *b > 0 => *b -= 1,
            _ => return Err(ReleaseError::PaidOnChain(*e)),
        }
    }
    Ok(())
}

/// Whether Bitcoin nodes relay an output to `script` (standard single-key/hash forms).
pub fn is_standard_payout(script: &ScriptBuf) -> bool {
    script.is_p2pkh() || script.is_p2sh() || script.is_p2wpkh() || script.is_p2wsh() || script.is_p2tr()
}

/// Virtual size of `tx` once every input carries a 64-byte key-path signature.
pub fn signed_vsize(tx: &Transaction) -> u64 {
    let mut stripped = tx.clone();
    for i in &mut stripped.input {
        i.witness = Witness::new();
    }
    let base = serialize(&stripped).len() as u64;
    // Witness: marker + flag, then per input: item count (1) + length (1) + 64 bytes.
    // (A transaction is at most a few MB: these products are far from overflowing.)
    let weight = base.saturating_mul(4).saturating_add(2).saturating_add(66u64.saturating_mul(tx.input.len() as u64));
    weight.div_ceil(4)
}

fn payout_value(p: &Payout, policy: &Policy) -> Option<u64> {
    p.amount.0.checked_sub(policy.peg_out_fee.0).filter(|v| *v >= policy.dust_limit(&p.script))
}

/// The smallest change output the release creates (the vault script's dust limit).
fn change_dust(policy: &Policy) -> u64 {
    policy.dust_limit(&policy.vault_script)
}

/// Weight of `tx` once every input carries a 64-byte key-path signature.
pub fn signed_weight(tx: &Transaction) -> u64 {
    signed_vsize(tx).saturating_mul(4)
}

/// Why a certified peg-out can never be paid (its amount does not cover the peg-out
/// fee plus the dust limit of its output type, or its script is not a standard
/// template that Bitcoin nodes relay), if it cannot. Such a
/// payout is left out of every release, so that it never holds up the others.
pub fn unpayable(p: &Payout, policy: &Policy) -> Option<ReleaseError> {
    if payout_value(p, policy).is_none() {
        Some(ReleaseError::TooSmall(p.event))
    } else if !is_standard_payout(&p.script) {
        Some(ReleaseError::NonStandard(p.event))
    } else {
        None
    }
}

/// Builds a release paying `payouts` from `utxos` at `fee_rate` sat/vB: largest UTXOs
/// first, change (if above dust) to the vault.
pub fn build(
    utxos: &[(OutPoint, Sats)],
    payouts: &[Payout],
    fee_rate: u64,
    policy: &Policy,
) -> Result<Proposal, ReleaseError> {
    build_with(&[], utxos, payouts, fee_rate, policy)
}

/// [`build`], spending every `required` UTXO (a merge must conflict with each release
/// it merges) and then as many of `optional`, largest first, as the payouts and fee need.
pub fn build_with(
    required: &[(OutPoint, Sats)],
    optional: &[(OutPoint, Sats)],
    payouts: &[Payout],
    fee_rate: u64,
    policy: &Policy,
) -> Result<Proposal, ReleaseError> {
    let mut payouts = payouts.to_vec();
    payouts.sort_by_key(|p| p.event.to_bytes());
    payouts.truncate(MAX_PAYOUTS);
    if payouts.is_empty() {
        return Err(ReleaseError::Malformed("no payouts"));
    }
    let mut outputs = Vec::new();
    for p in &payouts {
        if !is_standard_payout(&p.script) {
            return Err(ReleaseError::NonStandard(p.event));
        }
        let v = payout_value(p, policy).ok_or(ReleaseError::TooSmall(p.event))?;
        outputs.push(TxOut { value: Amount::from_sat(v), script_pubkey: p.script.clone() });
    }
    let overflow = || ReleaseError::Malformed("amounts overflow");
    let pay = total(&outputs)?;
    let fee_at = |tx: &Transaction| signed_vsize(tx).checked_mul(fee_rate).ok_or_else(overflow);
    let mut sorted: Vec<(OutPoint, Sats)> =
        optional.iter().filter(|(op, _)| !required.iter().any(|(r, _)| r == op)).copied().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut tx = Transaction { version: Version::TWO, lock_time: LockTime::ZERO, input: vec![], output: outputs };
    let mut prevouts = Vec::new();
    let mut have = 0u64;
    let change = TxOut { value: Amount::ZERO, script_pubkey: policy.vault_script.clone() };
    if required.len() > MAX_INPUTS {
        return Err(ReleaseError::Malformed("inputs"));
    }
    let need_all = required.len();
    for (k, (op, amount)) in required.iter().copied().chain(sorted).take(MAX_INPUTS).enumerate() {
        tx.input.push(TxIn {
            previous_output: op,
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            witness: Witness::new(),
        });
        prevouts.push(TxOut { value: Amount::from_sat(amount.0), script_pubkey: policy.vault_script.clone() });
        have = have.checked_add(amount.0).ok_or_else(overflow)?;
        if k + 1 < need_all {
            continue;
        }
        let mut with_change = tx.clone();
        with_change.output.push(change.clone());
        let fee = fee_at(&with_change)?;
        let spent = pay.checked_add(fee).ok_or_else(overflow)?;
        if signed_weight(&with_change) > MAX_STANDARD_WEIGHT {
            return Err(ReleaseError::TooHeavy { weight: signed_weight(&with_change) });
        }
        if let Some(left) = have.checked_sub(spent).filter(|left| *left >= change_dust(policy)) {
            let mut out = with_change;
            if let Some(c) = out.output.last_mut() {
                c.value = Amount::from_sat(left);
            }
            return Ok(Proposal { tx: out, prevouts, payouts: payouts.iter().map(|p| p.event).collect() });
        }
        if have >= pay.checked_add(fee_at(&tx)?).ok_or_else(overflow)? {
            // The remainder (below dust plus a change output's cost) goes to the fee.
            return Ok(Proposal { tx, prevouts, payouts: payouts.iter().map(|p| p.event).collect() });
        }
    }
    let need = pay.saturating_add(fee_at(&tx).unwrap_or(u64::MAX));
    Err(ReleaseError::InsufficientFunds { have, need })
}

/// [`build`], or, when the vault's free UTXOs cannot pay all of `payouts` at once, a
/// release of those (in the order given, oldest first) that they can: so that one
/// large peg-out the vault cannot cover yet (its funds held in releases waiting for
/// their change) never holds up the smaller ones behind it.
pub fn build_fundable(
    utxos: &[(OutPoint, Sats)],
    payouts: &[Payout],
    fee_rate: u64,
    policy: &Policy,
) -> Result<Proposal, ReleaseError> {
    // As `build` would: at most MAX_PAYOUTS, so that the fee bound below is that of
    // the release it tried.
    let payouts = payouts.get(..MAX_PAYOUTS).unwrap_or(payouts);
    let (have, need) = match build(utxos, payouts, fee_rate, policy) {
        Err(ReleaseError::InsufficientFunds { have, need }) => (have, need),
        other => return other,
    };
    let pay: u64 = payouts.iter().filter_map(|p| payout_value(p, policy)).fold(0, u64::saturating_add);
    // The fee of the release of them all: no less than that of any subset.
    let mut room = have.saturating_sub(need.saturating_sub(pay));
    let subset: Vec<Payout> = payouts
        .iter()
        .filter(|p| match payout_value(p, policy) {
            Some(v) if v <= room => {
                room -= v;
                true
            }
            _ => false,
        })
        .cloned()
        .collect();
    if subset.is_empty() || subset.len() == payouts.len() {
        return Err(ReleaseError::InsufficientFunds { have, need });
    }
    build(utxos, &subset, fee_rate, policy)
}

/// The replacement of `old` at `fee_rate`: same inputs and payouts, the higher fee
/// taken from the change. `None` if there is no change to take it from.
pub fn bump(old: &Proposal, fee_rate: u64, policy: &Policy) -> Option<Proposal> {
    let mut tx = old.tx.clone();
    let have = total(&old.prevouts).ok()?;
    let fee = signed_vsize(&tx).checked_mul(fee_rate)?;
    let all_out = total(&old.tx.output).ok()?;
    let change = tx.output.last_mut().filter(|o| o.script_pubkey == policy.vault_script)?;
    let others = all_out.checked_sub(change.value.to_sat())?;
    let new_change = have.checked_sub(others)?.checked_sub(fee)?;
    if new_change < change_dust(policy) || new_change >= change.value.to_sat() {
        return None;
    }
    change.value = Amount::from_sat(new_change);
    Some(Proposal { tx, prevouts: old.prevouts.clone(), payouts: old.payouts.clone() })
}

/// The unsigned transaction that pays only payout `index` of `p` (same inputs, same
/// fee, the rest as change to the vault): to ask Bitcoin Core which payout its policy
/// refuses when it refuses the whole release. `None` if `index` is not a payout.
pub fn payout_probe(p: &Proposal, index: usize, policy: &Policy) -> Option<Transaction> {
    if index >= p.payouts.len() {
        return None;
    }
    let out = p.tx.output.get(index)?.clone();
    let have = total(&p.prevouts).ok()?;
    let change = have.checked_sub(out.value.to_sat())?.checked_sub(p.fee())?;
    let mut tx = p.tx.clone();
    tx.output = vec![out];
    // Change below the vault's dust limit goes to the fee: the probe must not be
    // refused for an output of its own.
    if change >= change_dust(policy) {
        tx.output.push(TxOut { value: Amount::from_sat(change), script_pubkey: policy.vault_script.clone() });
    }
    Some(tx)
}

/// BIP341 key-path sighashes (SIGHASH_DEFAULT) of every input.
pub fn sighashes(tx: &Transaction, prevouts: &[TxOut]) -> Result<Vec<[u8; 32]>, ReleaseError> {
    let mut cache = SighashCache::new(tx);
    (0..tx.input.len())
        .map(|i| {
            cache
                .taproot_key_spend_signature_hash(i, &Prevouts::All(prevouts), TapSighashType::Default)
                .map(|h| *h.as_ref())
                .map_err(|e| ReleaseError::Sighash(e.to_string()))
        })
        .collect()
}

/// A release that may still confirm (being signed, broadcast, or replaced by one not
/// yet confirmed): what it spends and whom it pays.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Live {
    pub inputs: BTreeSet<OutPoint>,
    pub payouts: BTreeSet<EventId>,
}

impl Live {
    pub fn of(p: &Proposal) -> Self {
        Self {
            inputs: p.tx.input.iter().map(|i| i.previous_output).collect(),
            payouts: p.payouts.iter().copied().collect(),
        }
    }
}

/// What a validator checks a proposal against.
#[derive(Debug)]
pub struct View<'a> {
    /// Vault UTXOs at depth.
    pub utxos: &'a BTreeMap<OutPoint, Sats>,
    /// Releases this node signed or signs that may still confirm.
    pub live: &'a BTreeMap<Txid, Live>,
    /// Peg-outs paid by a release confirmed at depth.
    pub paid: &'a BTreeSet<EventId>,
    /// Certified peg-outs.
    pub certified: &'a BTreeMap<EventId, Payout>,
    /// This node's own fee estimate (sat/vB), if it has one: the fee band's centre.
    pub fee_estimate: Option<u64>,
    /// Inputs of rival releases this one may merge (a split batch's other half): like
    /// those of live releases, it may spend them beyond what its payouts need.
    pub rival_inputs: &'a BTreeSet<OutPoint>,
}

/// Validates `p` against this node's own view; returns the sighashes to sign.
pub fn validate(p: &Proposal, view: &View<'_>, policy: &Policy) -> Result<Vec<[u8; 32]>, ReleaseError> {
    let tx = &p.tx;
    if tx.version != Version::TWO || tx.lock_time != LockTime::ZERO {
        return Err(ReleaseError::Malformed("version 2, lock time 0 expected"));
    }
    if tx.input.is_empty() || tx.input.len() > MAX_INPUTS || p.prevouts.len() != tx.input.len() {
        return Err(ReleaseError::Malformed("inputs"));
    }
    if p.payouts.is_empty() || p.payouts.len() > MAX_PAYOUTS {
        return Err(ReleaseError::Malformed("payouts"));
    }
    if !p.payouts.iter().zip(p.payouts.iter().skip(1)).all(|(a, b)| a.to_bytes() < b.to_bytes()) {
        return Err(ReleaseError::Malformed("payouts not in strictly increasing event-id order"));
    }
    let inputs: BTreeSet<OutPoint> = tx.input.iter().map(|i| i.previous_output).collect();
    if inputs.len() != tx.input.len() {
        return Err(ReleaseError::Malformed("an input appears twice"));
    }
    for e in &p.payouts {
        if view.paid.contains(e) {
            return Err(ReleaseError::PayoutLocked(*e));
        }
    }
    for (txin, prev) in tx.input.iter().zip(&p.prevouts) {
        let op = txin.previous_output;
        if !txin.witness.is_empty() || !txin.script_sig.is_empty() {
            return Err(ReleaseError::Malformed("inputs must be unsigned"));
        }
        // No relative time lock (it could hold the release, and its payouts, for a year).
        if txin.sequence != Sequence::ENABLE_RBF_NO_LOCKTIME {
            return Err(ReleaseError::Malformed("input sequence must be 0xfffffffd (RBF, no time lock)"));
        }
        check_vault_input(op, prev, view, policy)?;
    }
    // Every live release that `p` touches (an input or a peg-out in common) must
    // conflict with it (an input in common: at most one of the two confirms) and be
    // paid in full by it (so nothing it promised is left to a release that can no
    // longer confirm). An RBF replacement (same inputs, same peg-outs) and the merge of
    // releases that split one batch (inputs of each, peg-outs of all) both qualify.
    // (The one replacement that leaves payouts out, a release's withdrawal after a
    // reorg, is checked by [`validate_withdrawal`] instead.)
    let pays: BTreeSet<EventId> = p.payouts.iter().copied().collect();
    let txid = p.txid();
    for (other, q) in view.live {
        if *other == txid {
            continue;
        }
        let common_input = q.inputs.intersection(&inputs).next().copied();
        let common_payout = q.payouts.intersection(&pays).next().copied();
        match (common_input, common_payout) {
            (None, None) => {}
            // Both could confirm: a second payment of the same peg-out.
            (None, Some(e)) => return Err(ReleaseError::PayoutLocked(e)),
            (Some(op), _) => {
                if let Some(e) = q.payouts.difference(&pays).next() {
                    return Err(ReleaseError::Strands { release: *other, event: *e, input: op });
                }
            }
        }
    }
    if tx.output.len() != p.payouts.len() && tx.output.len() != p.payouts.len() + 1 {
        return Err(ReleaseError::Malformed("outputs: one per payout plus at most one change"));
    }
    for (index, e) in p.payouts.iter().enumerate() {
        let payout = view.certified.get(e).ok_or(ReleaseError::UnknownPayout(*e))?;
        let value = payout_value(payout, policy).ok_or(ReleaseError::TooSmall(*e))?;
        if !is_standard_payout(&payout.script) {
            return Err(ReleaseError::NonStandard(*e));
        }
        let out = tx.output.get(index).ok_or(ReleaseError::Malformed("outputs"))?;
        if out.value.to_sat() != value || out.script_pubkey != payout.script {
            return Err(ReleaseError::WrongOutput { index, event: *e });
        }
    }
    if let Some(change) = tx.output.get(p.payouts.len())
        && (change.script_pubkey != policy.vault_script || change.value.to_sat() < change_dust(policy))
    {
        return Err(ReleaseError::ForeignOutput(p.payouts.len()));
    }
    let weight = signed_weight(tx);
    if weight > MAX_STANDARD_WEIGHT {
        return Err(ReleaseError::TooHeavy { weight });
    }
    let (inp, out) = (total(&p.prevouts)?, total(&tx.output)?);
    let fee = inp.checked_sub(out).ok_or(ReleaseError::Malformed("outputs exceed inputs"))?;
    let vsize = signed_vsize(tx);
    let rate = fee / vsize.max(1);
    // The band: never above the ceiling, nor above `max_fee_multiple` times this
    // signer's own estimate. Without change, up to dust plus a change output's cost
    // (43 vB) may go to the fee.
    let ceiling = policy.band_ceiling(view.fee_estimate);
    let slack = if tx.output.len() == p.payouts.len() {
        change_dust(policy).saturating_add(43u64.saturating_mul(ceiling))
    } else {
        0
    };
    if rate < policy.floor_sat_per_vb || fee > ceiling.saturating_mul(vsize).saturating_add(slack) {
        return Err(ReleaseError::FeeOutOfBounds { rate, floor: policy.floor_sat_per_vb, ceiling });
    }
    check_inputs_needed(p, view, policy, fee)?;
    sighashes(tx, &p.prevouts)
}

/// The replacement of live release `old` that leaves out the `withdrawn` peg-outs
/// (certified once, then reorged out past finality): the same inputs, the other
/// payouts unchanged, the rest as change to the vault. Its fee is the old one plus
/// 1 sat/vB of its own size (Bitcoin Core's incremental relay fee, so that it replaces
/// `old` in mempools), at least the floor: the same on every validator, so that every
/// honest one proposes the very same transaction. If every payout is withdrawn, it pays
/// everything back to the vault (a cancel).
pub fn withdraw(old: &Proposal, withdrawn: &BTreeSet<EventId>, policy: &Policy) -> Result<Proposal, ReleaseError> {
    let overflow = || ReleaseError::Malformed("amounts overflow");
    let mut outputs = Vec::new();
    let mut payouts = Vec::new();
    for (i, e) in old.payouts.iter().enumerate() {
        if withdrawn.contains(e) {
            continue;
        }
        outputs.push(old.tx.output.get(i).cloned().ok_or(ReleaseError::Malformed("outputs"))?);
        payouts.push(*e);
    }
    if payouts.len() == old.payouts.len() {
        return Err(ReleaseError::Malformed("nothing to withdraw"));
    }
    let have = total(&old.prevouts)?;
    let pay = total(&outputs)?;
    let mut tx =
        Transaction { version: Version::TWO, lock_time: LockTime::ZERO, input: old.tx.input.clone(), output: outputs };
    let fee_for = |tx: &Transaction| -> Result<u64, ReleaseError> {
        let vsize = signed_vsize(tx);
        let replacing = old.fee().checked_add(vsize).ok_or_else(overflow)?;
        Ok(replacing.max(vsize.checked_mul(policy.floor_sat_per_vb).ok_or_else(overflow)?))
    };
    let mut with_change = tx.clone();
    with_change.output.push(TxOut { value: Amount::ZERO, script_pubkey: policy.vault_script.clone() });
    let fee = fee_for(&with_change)?;
    let left = have.checked_sub(pay).and_then(|r| r.checked_sub(fee));
    if let Some(left) = left.filter(|l| *l >= change_dust(policy)) {
        if let Some(c) = with_change.output.last_mut() {
            c.value = Amount::from_sat(left);
        }
        return Ok(Proposal { tx: with_change, prevouts: old.prevouts.clone(), payouts });
    }
    // Too little for change: the remainder goes to the fee (never with no output at all).
    let need = pay.checked_add(fee_for(&tx)?).ok_or_else(overflow)?;
    if payouts.is_empty() || have < need {
        return Err(ReleaseError::InsufficientFunds { have, need });
    }
    tx.output.truncate(payouts.len());
    Ok(Proposal { tx, prevouts: old.prevouts.clone(), payouts })
}

/// `op`, spending `prev`, is a vault UTXO at depth of exactly that amount.
fn check_vault_input(op: OutPoint, prev: &TxOut, view: &View<'_>, policy: &Policy) -> Result<(), ReleaseError> {
    match view.utxos.get(&op) {
        Some(a) if a.0 == prev.value.to_sat() && prev.script_pubkey == policy.vault_script => Ok(()),
        _ => Err(ReleaseError::UnknownInput(op)),
    }
}

/// Validates `p` as the withdrawal of `old` (a live release this node validated and
/// signs or signed) leaving out `withdrawn`: it must be exactly [`withdraw`]'s
/// transaction, byte for byte, so that it pays nothing `old` did not pay (less the
/// withdrawn payouts), sends the rest to the vault, and pays the old fee plus the
/// incremental relay fee of its own size: no fee band applies, none is needed. Its
/// inputs must still be vault UTXOs at depth and its payouts unpaid.
pub fn validate_withdrawal(
    p: &Proposal,
    old: &Proposal,
    withdrawn: &BTreeSet<EventId>,
    view: &View<'_>,
    policy: &Policy,
) -> Result<Vec<[u8; 32]>, ReleaseError> {
    let expected = withdraw(old, withdrawn, policy)?;
    if expected != *p {
        return Err(ReleaseError::Malformed("not the withdrawal of the release it replaces"));
    }
    if let Some(e) = p.payouts.iter().find(|e| view.paid.contains(e)) {
        return Err(ReleaseError::PayoutLocked(*e));
    }
    for (txin, prev) in p.tx.input.iter().zip(&p.prevouts) {
        check_vault_input(txin.previous_output, prev, view, policy)?;
    }
    let weight = signed_weight(&p.tx);
    if weight > MAX_STANDARD_WEIGHT {
        return Err(ReleaseError::TooHeavy { weight });
    }
    sighashes(&p.tx, &p.prevouts)
}

/// Refuses a proposal that spends more inputs than it needs: those it shares with live
/// releases (it must conflict with each release it supersedes), then as many of the
/// rest, largest first, as the payouts and its fee need, plus at most
/// `consolidation_inputs`. (Otherwise one validator could sweep the whole vault into a
/// release, locking every UTXO while it is signed, or pay a fee on hundreds of inputs.)
fn check_inputs_needed(p: &Proposal, view: &View<'_>, policy: &Policy, fee: u64) -> Result<(), ReleaseError> {
    let overflow = ReleaseError::Malformed("amounts overflow");
    let shared: BTreeSet<OutPoint> =
        view.live.values().flat_map(|l| l.inputs.iter().copied()).chain(view.rival_inputs.iter().copied()).collect();
    let mut required = 0usize;
    let mut covered = 0u64;
    let mut rest = Vec::new();
    for (txin, prev) in p.tx.input.iter().zip(&p.prevouts) {
        if shared.contains(&txin.previous_output) {
            required = required.saturating_add(1);
            covered = covered.checked_add(prev.value.to_sat()).ok_or(overflow.clone())?;
        } else {
            rest.push(prev.value.to_sat());
        }
    }
    let payouts = p.tx.output.get(..p.payouts.len()).ok_or(ReleaseError::Malformed("outputs"))?;
    let need = total(payouts)?.checked_add(fee).ok_or(overflow.clone())?;
    rest.sort_unstable_by(|a, b| b.cmp(a));
    let mut needed = 0usize;
    for v in rest {
        if covered >= need {
            break;
        }
        covered = covered.checked_add(v).ok_or(overflow.clone())?;
        needed = needed.saturating_add(1);
    }
    let allowed = required.saturating_add(needed).saturating_add(policy.consolidation_inputs);
    if p.tx.input.len() > allowed {
        return Err(ReleaseError::TooManyInputs { inputs: p.tx.input.len(), allowed });
    }
    Ok(())
}

/// The sum of `outputs`' values; refuses any value above 21 M BTC and any overflow
/// (values come from a peer's proposal).
fn total(outputs: &[TxOut]) -> Result<u64, ReleaseError> {
    outputs.iter().try_fold(0u64, |sum, o| {
        let v = o.value.to_sat();
        if v > Amount::MAX_MONEY.to_sat() {
            return Err(ReleaseError::Malformed("an amount above 21 million BTC"));
        }
        sum.checked_add(v).ok_or(ReleaseError::Malformed("amounts overflow"))
    })
}

/// Puts the signatures (one per input, in order) into the witnesses.
pub fn finalize(tx: &Transaction, signatures: &[schnorr::Signature]) -> Transaction {
    let mut tx = tx.clone();
    for (input, sig) in tx.input.iter_mut().zip(signatures) {
        input.witness = Witness::from_slice(&[sig.serialize().to_vec()]);
    }
    tx
}

impl Proposal {
    /// `version | tx | prevouts | payouts`, each length-prefixed (u32 BE) or counted (u16 BE).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![PROPOSAL_VERSION];
        let tx = serialize(&self.tx);
        out.extend_from_slice(&(tx.len() as u32).to_be_bytes());
        out.extend(tx);
        out.extend_from_slice(&(self.prevouts.len() as u16).to_be_bytes());
        for p in &self.prevouts {
            let b = serialize(p);
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend(b);
        }
        out.extend_from_slice(&(self.payouts.len() as u16).to_be_bytes());
        for e in &self.payouts {
            out.extend_from_slice(&e.to_bytes());
        }
        out
    }

    /// Decodes [`Proposal::encode`]'s output; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, ReleaseError> {
        let bad = ReleaseError::Malformed;
        let mut r = bytes;
        let mut take = |n: usize| -> Result<&[u8], ReleaseError> {
            let (h, t) = r.split_at_checked(n).ok_or(bad("truncated"))?;
            r = t;
            Ok(h)
        };
        if take(1)? != [PROPOSAL_VERSION] {
            return Err(bad("unsupported version"));
        }
        let len = |b: &[u8]| -> usize { b.iter().fold(0usize, |a, x| (a << 8) | usize::from(*x)) };
        let n = len(take(4)?);
        if n > 400_000 {
            return Err(bad("transaction too large"));
        }
        let tx: Transaction = deserialize(take(n)?).map_err(|_| bad("transaction"))?;
        let count = len(take(2)?);
        if count > MAX_INPUTS {
            return Err(bad("too many prevouts"));
        }
        let mut prevouts = Vec::with_capacity(count);
        for _ in 0..count {
            let n = len(take(4)?);
            if n > 20_000 {
                return Err(bad("prevout too large"));
            }
            prevouts.push(deserialize::<TxOut>(take(n)?).map_err(|_| bad("prevout"))?);
        }
        let count = len(take(2)?);
        if count > MAX_PAYOUTS {
            return Err(bad("too many payouts"));
        }
        let mut payouts = Vec::with_capacity(count);
        for _ in 0..count {
            payouts.push(EventId::from_bytes(take(EventId::ENCODED_LEN)?).map_err(|_| bad("event id"))?);
        }
        if !r.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(Proposal { tx, prevouts, payouts })
    }

    pub fn txid(&self) -> Txid {
        self.tx.compute_txid()
    }

    /// Fee paid (inputs minus outputs).
    pub fn fee(&self) -> u64 {
        match (total(&self.prevouts), total(&self.tx.output)) {
            (Ok(inp), Ok(out)) => inp.saturating_sub(out),
            _ => 0,
        }
    }

    /// Fee rate once signed (sat/vB, rounded down), as the fee band judges it.
    pub fn fee_rate(&self) -> u64 {
        self.fee() / signed_vsize(&self.tx).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;
    use btcfi_types::{ChainId, TxHash};

    fn vault() -> ScriptBuf {
        let mut s = vec![0x51, 0x20];
        s.extend([7u8; 32]);
        ScriptBuf::from(s)
    }

    fn p2wpkh(b: u8) -> ScriptBuf {
        let mut s = vec![0x00, 0x14];
        s.extend([b; 20]);
        ScriptBuf::from(s)
    }

    fn policy() -> Policy {
        Policy::new(vault(), Sats(2_000), 1, 100)
    }

    fn event(i: u8) -> EventId {
        EventId::new(ChainId(31337), TxHash([i; 32]), u32::from(i))
    }

    fn outpoint(i: u8) -> OutPoint {
        OutPoint { txid: Txid::from_byte_array([i; 32]), vout: u32::from(i) }
    }

    struct Fixture {
        utxos: BTreeMap<OutPoint, Sats>,
        certified: BTreeMap<EventId, Payout>,
        live: BTreeMap<Txid, Live>,
        paid: BTreeSet<EventId>,
        estimate: Option<u64>,
        rivals: BTreeSet<OutPoint>,
    }

    impl Fixture {
        fn new() -> Self {
            let utxos = [(outpoint(1), Sats(1_000_000)), (outpoint(2), Sats(500_000)), (outpoint(3), Sats(80_000))]
                .into_iter()
                .collect();
            let certified = [(event(1), 300_000, 0xa1), (event(2), 150_000, 0xa2)]
                .into_iter()
                .map(|(e, a, s)| (e, Payout { event: e, amount: Sats(a), script: p2wpkh(s) }))
                .collect();
            Self {
                utxos,
                certified,
                live: BTreeMap::new(),
                paid: BTreeSet::new(),
                estimate: Some(50),
                rivals: BTreeSet::new(),
            }
        }

        fn view(&self) -> View<'_> {
            View {
                utxos: &self.utxos,
                live: &self.live,
                paid: &self.paid,
                certified: &self.certified,
                fee_estimate: self.estimate,
                rival_inputs: &self.rivals,
            }
        }

        fn build(&self, rate: u64) -> Proposal {
            let utxos: Vec<_> = self.utxos.iter().map(|(o, a)| (*o, *a)).collect();
            let payouts: Vec<_> = self.certified.values().cloned().collect();
            build(&utxos, &payouts, rate, &policy()).expect("build")
        }

        /// Records `p` as accepted (live: its inputs and payouts held), as the node does.
        fn lock(&mut self, p: &Proposal) {
            self.live.insert(p.txid(), Live::of(p));
        }
    }

    #[test]
    fn a_built_release_validates_and_pays_exactly_the_attested_amounts_minus_the_fee() {
        let f = Fixture::new();
        let p = f.build(5);
        let hashes = validate(&p, &f.view(), &policy()).expect("valid");
        assert_eq!(hashes.len(), p.tx.input.len());
        assert_eq!(p.payouts, vec![event(1), event(2)]);
        assert_eq!(p.tx.output[0].value.to_sat(), 300_000 - 2_000);
        assert_eq!(p.tx.output[0].script_pubkey, p2wpkh(0xa1));
        assert_eq!(p.tx.output[1].value.to_sat(), 150_000 - 2_000);
        let change = &p.tx.output[2];
        assert_eq!(change.script_pubkey, vault());
        // Largest UTXO first: one input covers both payouts.
        assert_eq!(p.tx.input.len(), 1);
        assert_eq!(p.tx.input[0].previous_output, outpoint(1));
        let rate = p.fee() / signed_vsize(&p.tx);
        assert_eq!(rate, 5, "fee {} for {} vB", p.fee(), signed_vsize(&p.tx));
        assert_eq!(1_000_000 - 298_000 - 148_000 - p.fee(), change.value.to_sat());
    }

    #[test]
    fn every_deviation_from_the_attested_payouts_is_refused() {
        let f = Fixture::new();
        let good = f.build(5);
        let check = |mutate: &dyn Fn(&mut Proposal)| {
            let mut p = good.clone();
            mutate(&mut p);
            validate(&p, &f.view(), &policy()).expect_err("must be refused")
        };
        // One sat more to a payee.
        let e = check(&|p| p.tx.output[0].value = Amount::from_sat(298_001));
        assert!(matches!(e, ReleaseError::WrongOutput { index: 0, .. }), "{e}");
        // Another script.
        let e = check(&|p| p.tx.output[1].script_pubkey = p2wpkh(0xee));
        assert!(matches!(e, ReleaseError::WrongOutput { index: 1, .. }), "{e}");
        // Change not to the vault.
        let e = check(&|p| p.tx.output[2].script_pubkey = p2wpkh(0xee));
        assert!(matches!(e, ReleaseError::ForeignOutput(2)), "{e}");
        // An extra output.
        let e = check(&|p| p.tx.output.push(TxOut { value: Amount::from_sat(1_000), script_pubkey: vault() }));
        assert!(matches!(e, ReleaseError::Malformed(_)), "{e}");
        // A payout it does not pay in its outputs but claims to.
        let e = check(&|p| p.payouts.push(event(9)));
        assert!(matches!(e, ReleaseError::Malformed(_) | ReleaseError::UnknownPayout(_)), "{e}");
        // An input that is not a vault UTXO, or with another amount.
        let e = check(&|p| p.tx.input[0].previous_output = outpoint(9));
        assert!(matches!(e, ReleaseError::UnknownInput(_)), "{e}");
        let e = check(&|p| p.prevouts[0].value = Amount::from_sat(2_000_000));
        assert!(matches!(e, ReleaseError::UnknownInput(_)), "{e}");
        // A relative time lock.
        let e = check(&|p| p.tx.input[0].sequence = Sequence(0x0000_ffff));
        assert!(matches!(e, ReleaseError::Malformed(_)), "{e}");
        // Fee far above the ceiling (the change given to the miners).
        let e = check(&|p| p.tx.output[2].value = Amount::from_sat(1_000));
        assert!(matches!(e, ReleaseError::FeeOutOfBounds { .. }), "{e}");
        // Below the floor.
        let e = check(&|p| {
            let v = p.tx.output[2].value.to_sat();
            p.tx.output[2].value = Amount::from_sat(v + p.fee() - 10);
        });
        assert!(matches!(e, ReleaseError::FeeOutOfBounds { .. }), "{e}");
        // Amounts that would overflow a u64 sum: refused, no panic.
        let e = check(&|p| p.tx.output[2].value = Amount::from_sat(u64::MAX - 100));
        assert!(matches!(e, ReleaseError::Malformed(_)), "{e}");
        // Signed already.
        let e = check(&|p| p.tx.input[0].witness = Witness::from_slice(&[[1u8; 64]]));
        assert!(matches!(e, ReleaseError::Malformed(_)), "{e}");
    }

    #[test]
    fn a_payout_is_promised_to_one_release_or_to_its_exact_replacement() {
        let mut f = Fixture::new();
        let first = f.build(5);
        validate(&first, &f.view(), &policy()).expect("valid");
        f.lock(&first);
        // The same payouts from other inputs: two releases could both confirm. Refused.
        f.utxos.remove(&outpoint(1));
        f.utxos.insert(outpoint(4), Sats(2_000_000));
        let other = f.build(5);
        assert_ne!(other.tx.input[0].previous_output, first.tx.input[0].previous_output);
        let e = validate(&other, &f.view(), &policy()).expect_err("double payment");
        assert!(matches!(e, ReleaseError::PayoutLocked(_)), "{e}");
        f.utxos.insert(outpoint(1), Sats(1_000_000));
        // The RBF replacement (same inputs, same payouts, higher fee): accepted.
        let bumped = bump(&first, 10, &policy()).expect("bump");
        assert!(bumped.fee() > first.fee());
        assert_eq!(bumped.payouts, first.payouts);
        validate(&bumped, &f.view(), &policy()).expect("replacement");
        // A "replacement" that drops a payout would leave it promised to a dead release.
        let mut partial = bumped.clone();
        partial.payouts.remove(1);
        partial.tx.output.remove(1);
        let e = validate(&partial, &f.view(), &policy()).expect_err("drops a payout");
        assert!(matches!(e, ReleaseError::Strands { event: e2, .. } if e2 == event(2)), "{e}");
        // Once confirmed, a peg-out is never paid again, not even by a "replacement".
        let mut done = Fixture::new();
        done.paid.insert(event(1));
        let e = validate(&bumped, &done.view(), &policy()).expect_err("paid");
        assert_eq!(e, ReleaseError::PayoutLocked(event(1)));
        // Any other release spending a locked input: refused.
        let mut f2 = Fixture::new();
        f2.lock(&first);
        f2.certified.insert(event(3), Payout { event: event(3), amount: Sats(50_000), script: p2wpkh(0xa3) });
        let utxos = vec![(outpoint(1), Sats(1_000_000))];
        let third = build(&utxos, &[f2.certified[&event(3)].clone()], 5, &policy()).expect("build");
        let e = validate(&third, &f2.view(), &policy()).expect_err("input spent by another release");
        assert!(matches!(e, ReleaseError::Strands { .. }), "{e}");
    }

    /// A peg-out in a live release whose burn is reorged out past finality: the
    /// withdrawal pays the others from the same inputs at a higher absolute fee, the
    /// same transaction every time. As an ordinary proposal it strands the peg-out; as
    /// the withdrawal of that release it is valid, and nothing else is (not another
    /// fee, not one more payout left out). With every payout withdrawn, it pays
    /// everything back to the vault in one output.
    #[test]
    fn a_reorged_peg_out_is_left_out_by_the_withdrawal_of_its_release() {
        let mut f = Fixture::new();
        let first = f.build(5);
        f.lock(&first);
        let gone: BTreeSet<EventId> = [event(2)].into_iter().collect();
        let w = withdraw(&first, &gone, &policy()).expect("withdrawal");
        assert_eq!(w.payouts, vec![event(1)]);
        assert_eq!(Live::of(&w).inputs, Live::of(&first).inputs);
        assert_eq!(w.tx.output[0], first.tx.output[0], "the other payout unchanged");
        assert_eq!(w.tx.output.len(), 2, "one payout and change");
        assert_eq!(w.fee(), first.fee() + signed_vsize(&w.tx), "replaces the old one in a mempool");
        assert_eq!(withdraw(&first, &gone, &policy()).expect("again").txid(), w.txid());
        // As an ordinary proposal: it strands the peg-out it leaves out.
        let e = validate(&w, &f.view(), &policy()).expect_err("strands");
        assert!(matches!(e, ReleaseError::Strands { event: e2, .. } if e2 == event(2)), "{e}");
        // As the withdrawal of `first`: valid.
        validate_withdrawal(&w, &first, &gone, &f.view(), &policy()).expect("the withdrawal");
        // Any other transaction is not the withdrawal: more fee, or another payout out.
        let mut greedy = w.clone();
        greedy.tx.output[1].value = Amount::from_sat(greedy.tx.output[1].value.to_sat() - 5_000);
        assert!(validate_withdrawal(&greedy, &first, &gone, &f.view(), &policy()).is_err());
        let both: BTreeSet<EventId> = [event(1), event(2)].into_iter().collect();
        let cancel = withdraw(&first, &both, &policy()).expect("cancel");
        assert!(validate_withdrawal(&cancel, &first, &gone, &f.view(), &policy()).is_err(), "withdraws more");
        assert!(cancel.payouts.is_empty());
        assert_eq!(cancel.tx.output.len(), 1);
        assert_eq!(cancel.tx.output[0].script_pubkey, vault());
        validate_withdrawal(&cancel, &first, &both, &f.view(), &policy()).expect("cancel");
        // A release with no payouts is never valid as an ordinary proposal.
        assert!(matches!(validate(&cancel, &f.view(), &policy()), Err(ReleaseError::Malformed(_))));
        // Its inputs spent meanwhile (not vault UTXOs any more): refused.
        f.utxos.clear();
        assert!(matches!(
            validate_withdrawal(&w, &first, &gone, &f.view(), &policy()),
            Err(ReleaseError::UnknownInput(_))
        ));
        // Nothing withdrawn: not a withdrawal.
        assert!(withdraw(&first, &BTreeSet::new(), &policy()).is_err());
    }

    /// A batch that split (one proposer sent two releases with different inputs for the
    /// same peg-outs; each half of the validators holds one): the merge spends an input
    /// of each, pays everything, and is valid on both sides, while either half alone
    /// is still refused the other's release.
    #[test]
    fn split_releases_merge_into_one_that_conflicts_with_both() {
        let base = Fixture::new();
        let r1 = base.build(5);
        let mut without1 = Fixture::new();
        without1.utxos.remove(&r1.tx.input[0].previous_output);
        without1.utxos.insert(outpoint(4), Sats(900_000));
        let r2 = without1.build(5);
        assert!(Live::of(&r1).inputs.is_disjoint(&Live::of(&r2).inputs));
        let mut a = Fixture::new();
        a.utxos.insert(outpoint(4), Sats(900_000));
        a.lock(&r1);
        let mut b = Fixture::new();
        b.utxos.insert(outpoint(4), Sats(900_000));
        b.lock(&r2);
        assert!(matches!(validate(&r2, &a.view(), &policy()), Err(ReleaseError::PayoutLocked(_))));
        assert!(matches!(validate(&r1, &b.view(), &policy()), Err(ReleaseError::PayoutLocked(_))));
        let required: Vec<(OutPoint, Sats)> = [&r1, &r2]
            .iter()
            .flat_map(|r| r.tx.input.iter().map(|i| i.previous_output))
            .map(|op| (op, a.utxos[&op]))
            .collect();
        let payouts: Vec<Payout> = a.certified.values().cloned().collect();
        let merged = build_with(&required, &[], &payouts, 5, &policy()).expect("merge");
        assert_eq!(merged.tx.input.len(), 2);
        validate(&merged, &a.view(), &policy()).expect("valid beside r1");
        validate(&merged, &b.view(), &policy()).expect("valid beside r2");
        // Both halves hold it: it conflicts with each, so exactly one of the three confirms.
        a.lock(&merged);
        assert!(matches!(validate(&r2, &a.view(), &policy()), Err(ReleaseError::PayoutLocked(_))));
    }

    #[test]
    fn the_chain_bounds_payments_whatever_the_database_forgot() {
        let f = Fixture::new();
        let pol = policy();
        let p = f.build(5);
        let none = BTreeMap::new();
        check_budget(&p, &f.certified, &none, &BTreeSet::new(), &pol).expect("nothing paid yet");
        // The chain shows event 1's payment (a release this node forgot): paying it again
        // is refused, whichever event id the new proposal names.
        let class1 = class_of(&f.certified[&event(1)], &pol).expect("payable");
        let paid: BTreeMap<_, _> = [(class1.clone(), 1usize)].into_iter().collect();
        let e = check_budget(&p, &f.certified, &paid, &BTreeSet::new(), &pol).expect_err("paid on chain");
        assert_eq!(e, ReleaseError::PaidOnChain(event(1)));
        assert!(e.may_pass_later());
        // A second certified peg-out of the same class may still be paid once.
        let mut two = Fixture::new();
        let twin = Payout { event: event(7), ..f.certified[&event(1)].clone() };
        two.certified.insert(event(7), twin);
        let budget = payment_budget(&two.certified, &paid, &BTreeSet::new(), &pol);
        assert_eq!(budget[&class1], 1);
        let utxos: Vec<_> = two.utxos.iter().map(|(o, a)| (*o, *a)).collect();
        let only7 = build(&utxos, &[two.certified[&event(7)].clone()], 5, &pol).expect("build");
        check_budget(&only7, &two.certified, &paid, &BTreeSet::new(), &pol).expect("one left");
        // Promised to another release not yet on chain: that uses the last one up.
        let promised: BTreeSet<_> = [event(1)].into_iter().collect();
        let e = check_budget(&only7, &two.certified, &paid, &promised, &pol).expect_err("budget used");
        assert_eq!(e, ReleaseError::PaidOnChain(event(7)));
    }

    #[test]
    fn unpayable_peg_outs_are_named() {
        let pol = policy();
        let dust = pol.dust_limit(&p2wpkh(1));
        let small = Payout { event: event(1), amount: Sats(2_000 + dust - 1), script: p2wpkh(1) };
        assert!(matches!(unpayable(&small, &pol), Some(ReleaseError::TooSmall(_))));
        let odd = Payout { event: event(2), amount: Sats(100_000), script: ScriptBuf::from(vec![0x51]) };
        assert!(matches!(unpayable(&odd, &pol), Some(ReleaseError::NonStandard(_))));
        let fine = Payout { event: event(3), amount: Sats(2_000 + dust), script: p2wpkh(3) };
        assert!(unpayable(&fine, &pol).is_none());
    }

    fn script(bytes: &[u8]) -> ScriptBuf {
        ScriptBuf::from(bytes.to_vec())
    }

    fn templates() -> Vec<(&'static str, ScriptBuf, u64)> {
        let with = |head: &[u8], body: &[u8], tail: &[u8]| script(&[head, body, tail].concat());
        vec![
            ("p2pkh", with(&[0x76, 0xa9, 0x14], &[1; 20], &[0x88, 0xac]), 546),
            ("p2sh", with(&[0xa9, 0x14], &[2; 20], &[0x87]), 540),
            ("p2wpkh", with(&[0x00, 0x14], &[3; 20], &[]), 294),
            ("p2wsh", with(&[0x00, 0x20], &[4; 32], &[]), 330),
            ("p2tr", with(&[0x51, 0x20], &[5; 32], &[]), 330),
        ]
    }

    /// The dust limit is computed per output type, exactly as Bitcoin Core does (and as
    /// rust-bitcoin's `minimal_non_dust` does at the default relay fee), not one number.
    #[test]
    fn the_dust_limit_is_that_of_each_output_type() {
        let pol = policy();
        for (name, s, expected) in templates() {
            assert!(is_standard_payout(&s), "{name}");
            assert_eq!(pol.dust_limit(&s), expected, "{name}");
            assert_eq!(pol.dust_limit(&s), s.minimal_non_dust().to_sat(), "{name}");
        }
        let mut doubled = policy();
        doubled.dust_relay_sat_per_kvb = 6_000;
        assert_eq!(doubled.dust_limit(&templates()[0].1), 1_092);
    }

    /// A 2,400-sat burn to P2PKH leaves 400 sat after the 2,000-sat fee: below P2PKH's
    /// 546-sat dust, so it is set apart (it would make the whole release non-standard),
    /// while the same amount to P2WPKH (294) is paid. With the former single P2TR dust
    /// number (330) the P2PKH payout entered releases that no node relays.
    #[test]
    fn a_payout_below_its_own_types_dust_never_enters_a_release() {
        let pol = policy();
        let t = templates();
        let (p2pkh, p2wpkh) = (t[0].clone(), t[2].clone());
        let bad = Payout { event: event(1), amount: Sats(2_400), script: p2pkh.1 };
        assert_eq!(unpayable(&bad, &pol), Some(ReleaseError::TooSmall(event(1))));
        let good = Payout { event: event(2), amount: Sats(2_400), script: p2wpkh.1 };
        assert_eq!(unpayable(&good, &pol), None);
        let utxos = vec![(outpoint(1), Sats(1_000_000))];
        assert_eq!(build(&utxos, &[bad.clone(), good.clone()], 5, &pol), Err(ReleaseError::TooSmall(event(1))));
        let p = build(&utxos, &[good], 5, &pol).expect("the good one alone");
        assert_eq!(p.tx.output[0].value.to_sat(), 400);
        // Not standard: bare OP_TRUE, OP_RETURN, a P2WPKH push of 19 bytes.
        for s in [script(&[0x51]), script(&[0x6a, 0x01, 0x00]), script(&[[0x00, 0x13].as_slice(), &[0; 19]].concat())] {
            let odd = Payout { event: event(3), amount: Sats(100_000), script: s };
            assert_eq!(unpayable(&odd, &pol), Some(ReleaseError::NonStandard(event(3))));
        }
    }

    /// A proposal at ten times the honest rate is refused, though under the configured
    /// ceiling; twice this signer's estimate is the most it accepts.
    #[test]
    fn a_fee_rate_far_above_the_signers_own_estimate_is_refused() {
        let mut f = Fixture::new();
        f.estimate = Some(5);
        let pol = policy();
        assert_eq!(pol.band_ceiling(Some(5)), 10);
        validate(&f.build(5), &f.view(), &pol).expect("the honest rate");
        validate(&f.build(10), &f.view(), &pol).expect("twice the estimate");
        let greedy = f.build(50);
        assert!(50 <= pol.ceiling_sat_per_vb);
        let e = validate(&greedy, &f.view(), &pol).expect_err("ten times the estimate");
        assert!(matches!(e, ReleaseError::FeeOutOfBounds { ceiling: 10, .. }), "{e}");
        // A signer that never read an estimate is bounded by the ceiling alone.
        f.estimate = None;
        validate(&f.build(50), &f.view(), &pol).expect("under the ceiling");
        assert!(matches!(validate(&f.build(101), &f.view(), &pol), Err(ReleaseError::FeeOutOfBounds { .. })));
    }

    /// Spending every vault UTXO for a payout that one covers is refused beyond the
    /// consolidation allowance.
    #[test]
    fn a_proposal_spends_no_more_inputs_than_it_needs_plus_the_allowance() {
        let mut f = Fixture::new();
        for i in 4..10 {
            f.utxos.insert(outpoint(i), Sats(10_000));
        }
        let mut pol = policy();
        let all: Vec<(OutPoint, Sats)> = f.utxos.iter().map(|(o, a)| (*o, *a)).collect();
        let payouts: Vec<Payout> = f.certified.values().cloned().collect();
        // Every UTXO required: nine inputs for what one covers.
        let sweep = build_with(&all, &[], &payouts, 5, &pol).expect("build");
        assert_eq!(sweep.tx.input.len(), 9);
        let e = validate(&sweep, &f.view(), &pol).expect_err("sweep");
        assert_eq!(e, ReleaseError::TooManyInputs { inputs: 9, allowed: 3 });
        // The largest plus two small ones: within the allowance.
        let three: Vec<(OutPoint, Sats)> = all.iter().filter(|(o, _)| [1, 4, 5].contains(&o.vout)).copied().collect();
        let consolidating = build_with(&three, &[], &payouts, 5, &pol).expect("build");
        validate(&consolidating, &f.view(), &pol).expect("two consolidation inputs");
        pol.consolidation_inputs = 0;
        let e = validate(&consolidating, &f.view(), &pol).expect_err("no allowance");
        assert_eq!(e, ReleaseError::TooManyInputs { inputs: 3, allowed: 1 });
        // Inputs shared with a live release it supersedes do not count against it.
        f.lock(&consolidating);
        let mut pol = policy();
        pol.consolidation_inputs = 0;
        let bumped = bump(&consolidating, 10, &pol).expect("bump");
        validate(&bumped, &f.view(), &pol).expect("a replacement keeps its inputs");
    }

    /// A split batch's merge spends every input of both halves. Where this node holds
    /// one half (its inputs live), the other half's inputs (a rival it keeps) are
    /// needed too: without counting them, an honest merge of a one-input half and a
    /// three-input half was refused as spending too many inputs.
    #[test]
    fn a_merge_may_spend_every_input_of_the_rival_it_merges() {
        let mut f = Fixture::new();
        for i in 4..7 {
            f.utxos.insert(outpoint(i), Sats(200_000));
        }
        let pol = policy();
        let payouts: Vec<Payout> = f.certified.values().cloned().collect();
        let half_a = build_with(&[(outpoint(1), Sats(1_000_000))], &[], &payouts, 5, &pol).expect("a");
        let three: Vec<(OutPoint, Sats)> = (4..7).map(|i| (outpoint(i), Sats(200_000))).collect();
        let half_b = build_with(&three, &[], &payouts, 5, &pol).expect("b");
        f.lock(&half_a);
        let mut all = vec![(outpoint(1), Sats(1_000_000))];
        all.extend(three.iter().copied());
        let merge = build_with(&all, &[], &payouts, 5, &pol).expect("merge");
        assert_eq!(merge.tx.input.len(), 4);
        let e = validate(&merge, &f.view(), &pol).expect_err("the rival's inputs not counted");
        assert!(matches!(e, ReleaseError::TooManyInputs { inputs: 4, .. }), "{e}");
        f.rivals = Live::of(&half_b).inputs;
        validate(&merge, &f.view(), &pol).expect("the rival's inputs are needed to conflict with it");
    }

    /// The probe that asks bitcoind about one payout alone never carries change below
    /// the vault's dust limit (which bitcoind would refuse for itself).
    #[test]
    fn a_payout_probe_pays_that_payout_and_no_dust_change() {
        let f = Fixture::new();
        let p = f.build(5);
        let probe = payout_probe(&p, 1, &policy()).expect("probe");
        assert_eq!(probe.output[0], p.tx.output[1]);
        assert_eq!(probe.input, p.tx.input);
        let out: u64 = probe.output.iter().map(|o| o.value.to_sat()).sum();
        assert_eq!(out + p.fee(), 1_000_000, "same inputs, same fee");
        assert!(payout_probe(&p, 2, &policy()).is_none(), "change is not a payout");
        // Without change, the rest below dust goes to the fee.
        let mut tight = p.clone();
        tight.tx.output.truncate(2);
        tight.prevouts[0].value = Amount::from_sat(298_000 + 148_000 + tight.fee().min(5_000));
        let probe = payout_probe(&tight, 0, &policy()).expect("probe");
        assert!(probe.output.iter().skip(1).all(|o| o.value.to_sat() >= policy().dust_limit(&vault())));
    }

    #[test]
    fn a_peg_out_the_vault_cannot_cover_yet_does_not_hold_up_those_it_can() {
        let utxos = vec![(outpoint(1), Sats(100_000)), (outpoint(2), Sats(50_000))];
        let big = Payout { event: event(1), amount: Sats(400_000), script: p2wpkh(1) };
        let small: Vec<Payout> =
            (2..6).map(|i| Payout { event: event(i), amount: Sats(30_000), script: p2wpkh(i) }).collect();
        let all: Vec<Payout> = std::iter::once(big.clone()).chain(small.iter().cloned()).collect();
        assert!(matches!(build(&utxos, &all, 5, &policy()), Err(ReleaseError::InsufficientFunds { .. })));
        let p = build_fundable(&utxos, &all, 5, &policy()).expect("the small ones fit");
        assert!(!p.payouts.contains(&big.event), "the big one waits");
        assert_eq!(p.payouts.len(), 4, "every small one is paid: {:?}", p.payouts);
        // As many as fit, oldest first, when not all the small ones do.
        let tight = vec![(outpoint(1), Sats(70_000))];
        let p = build_fundable(&tight, &all, 5, &policy()).expect("two fit");
        assert_eq!(p.payouts, vec![small[0].event, small[1].event]);
        // Nothing that fits: the error names what the vault holds.
        let none = vec![(outpoint(1), Sats(10_000))];
        let e = build_fundable(&none, &all, 5, &policy()).expect_err("nothing fits");
        assert!(matches!(e, ReleaseError::InsufficientFunds { have: 10_000, .. }), "{e}");
    }

    #[test]
    fn not_enough_in_the_vault_is_a_clear_error() {
        let utxos = vec![(outpoint(1), Sats(100_000))];
        let payout = Payout { event: event(1), amount: Sats(200_000), script: p2wpkh(1) };
        let e = build(&utxos, &[payout], 5, &policy()).expect_err("too little");
        assert!(matches!(e, ReleaseError::InsufficientFunds { have: 100_000, .. }), "{e}");
    }

    #[test]
    fn proposals_round_trip_and_never_panic_on_bad_bytes() {
        let p = Fixture::new().build(5);
        let bytes = p.encode();
        assert_eq!(Proposal::decode(&bytes).expect("decodes"), p);
        for cut in 0..bytes.len() {
            assert!(Proposal::decode(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(Proposal::decode(&extra).is_err());
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2_000 {
            let mut b = bytes.clone();
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed as usize) % b.len();
                b[i] = (seed >> 32) as u8;
            }
            let _ = Proposal::decode(&b);
        }
    }
}
