//! How each change of the release book moves the API's release records (`rel/`):
//! a pure function of the change and the records it touches, so that every rule
//! (which status a release shows, when its fee counts as paid) is tested without a
//! node.

use crate::records::{ReleaseRecord, ReleaseStatus};
use crate::release::book::Change;
use bitcoin::Txid;
use btcfi_types::{EventId, Sats};

/// What one change does to the records.
#[derive(Debug, Default)]
pub(super) struct Update {
    /// Records to write (each whole).
    pub records: Vec<ReleaseRecord>,
    /// Network fees that reached the chain with this change, counted once per release
    /// however often a reorg takes it out and puts it back.
    pub fees_paid: u64,
    /// A release final on chain now, and how many peg-outs it paid (for the log).
    pub confirmed: Option<(Txid, usize)>,
    /// A release that can no longer confirm here: its signing sessions are left.
    pub dropped: Option<Txid>,
    /// Peg-outs that a release takes in again: no longer shown as unpayable.
    pub payable_again: Vec<EventId>,
}

/// The update `change` makes. `load` reads a release's record; `conflicting` are the
/// live releases sharing an input with a new live one (it may replace them, by RBF);
/// `confirmations` is the depth a spend is reported at; `peg_out_fee` goes into a new
/// record.
pub(super) fn update(
    change: &Change,
    mut load: impl FnMut(&Txid) -> eyre::Result<Option<ReleaseRecord>>,
    conflicting: &[Txid],
    confirmations: u64,
    peg_out_fee: Sats,
) -> eyre::Result<Update> {
    let mut u = Update::default();
    match change {
        Change::Live { txid, proposer, proposal, at } => {
            for t in conflicting.iter().filter(|t| *t != txid) {
                if let Some(mut r) = load(t)?
                    && matches!(r.status, ReleaseStatus::Signing | ReleaseStatus::Broadcast)
                {
                    r.status = ReleaseStatus::Replaced;
                    u.records.push(r);
                }
            }
            let replaces = conflicting.iter().find(|t| *t != txid);
            u.records.push(ReleaseRecord::signing(proposal, *proposer, *at, peg_out_fee, replaces));
            u.payable_again = proposal.payouts.clone();
        }
        Change::Signed { txid, signatures } => {
            if let Some(mut r) = load(txid)? {
                r.signatures = signatures.iter().map(|s| Some(hex::encode(s.serialize()))).collect();
                if r.status == ReleaseStatus::Signing {
                    r.status = ReleaseStatus::Broadcast;
                }
                u.records.push(r);
            }
        }
        Change::Dropped { txid } | Change::Expired { txid } => {
            u.dropped = Some(*txid);
            if let Some(mut r) = load(txid)?
                && r.status != ReleaseStatus::Confirmed
            {
                r.status = match change {
                    Change::Expired { .. } => ReleaseStatus::Expired,
                    _ => ReleaseStatus::Conflicted,
                };
                u.records.push(r);
            }
        }
        Change::Spent { spend, .. } => {
            if let Some(mut r) = load(&spend.txid)? {
                if r.status != ReleaseStatus::Confirmed {
                    u.confirmed = Some((spend.txid, r.payouts.len()));
                }
                if !r.fee_counted {
                    u.fees_paid = r.fee_sats;
                    r.fee_counted = true;
                }
                r.status = ReleaseStatus::Confirmed;
                r.confirmations = r.confirmations.max(confirmations);
                u.records.push(r);
            }
        }
        Change::Unspent { txid } => {
            if let Some(mut r) = load(txid)?
                && r.status == ReleaseStatus::Confirmed
            {
                r.status = ReleaseStatus::Broadcast;
                r.confirmations = 0;
                // Counted when it first confirmed (a record from before the flag
                // existed was, too): not again when it confirms once more.
                r.fee_counted = true;
                u.records.push(r);
            }
        }
        Change::Shared { .. }
        | Change::Reorged(_)
        | Change::Unreorged(_)
        | Change::Pinned(_)
        | Change::SetApart { .. } => {}
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::Proposal;
    use crate::release::book::Spend;
    use bitcoin::{Amount, OutPoint, ScriptBuf, Transaction, TxIn, TxOut, absolute, transaction};
    use btcfi_types::{ChainId, TxHash};
    use std::collections::BTreeMap;

    fn proposal(n: u8) -> Proposal {
        let script = ScriptBuf::from(vec![0x51, 0x20].into_iter().chain([n; 32]).collect::<Vec<u8>>());
        let event = EventId { chain: ChainId(1), tx: TxHash([n; 32]), index: 0 };
        let tx = Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint { txid: Txid::from_raw_hash(bitcoin::hashes::Hash::all_zeros()), vout: 0 },
                ..Default::default()
            }],
            output: vec![TxOut { value: Amount::from_sat(50_000), script_pubkey: script.clone() }],
        };
        let prevouts = vec![TxOut { value: Amount::from_sat(60_000), script_pubkey: script.clone() }];
        Proposal { tx, prevouts, payouts: vec![event] }
    }

    /// Applies `change` to the records in `db`, as the node writes them.
    fn apply(db: &mut BTreeMap<Txid, ReleaseRecord>, change: &Change) -> Update {
        let snapshot = db.clone();
        let u = update(change, |t| Ok(snapshot.get(t).cloned()), &[], 6, Sats(1_000)).expect("update");
        for r in &u.records {
            db.insert(r.txid.parse().expect("txid"), r.clone());
        }
        u
    }

    /// A release taken out by a reorg and final again paid its fee once: counted once.
    #[test]
    fn a_fee_is_counted_once_however_often_a_reorg_takes_its_release_out() {
        let p = proposal(1);
        let txid = p.txid();
        let spend = Spend { txid, spent: vec![p.tx.input[0].previous_output], payments: vec![] };
        let mut db = BTreeMap::new();
        apply(&mut db, &Change::Live { txid, proposer: 0, proposal: p.clone(), at: 5 });
        let spent = Change::Spent { spend, paid: p.payouts.clone(), tx: None };
        let mut fees = apply(&mut db, &spent).fees_paid;
        assert_eq!(fees, p.fee(), "the fee counts when the release is final");
        for _ in 0..3 {
            assert_eq!(apply(&mut db, &Change::Unspent { txid }).fees_paid, 0);
            assert_eq!(db[&txid].status, ReleaseStatus::Broadcast);
            let again = apply(&mut db, &spent);
            assert!(again.confirmed.is_some(), "final again is logged");
            fees += again.fees_paid;
        }
        assert_eq!(fees, p.fee(), "paid once on chain, counted once");
        assert_eq!(db[&txid].status, ReleaseStatus::Confirmed);
    }

    /// A record written before `fee_counted` existed, confirmed then, is not counted
    /// again when a reorg takes it out and it confirms once more.
    #[test]
    fn a_confirmed_record_from_before_the_flag_is_not_counted_again() {
        let p = proposal(2);
        let txid = p.txid();
        let mut db = BTreeMap::new();
        apply(&mut db, &Change::Live { txid, proposer: 0, proposal: p.clone(), at: 5 });
        let mut old = db[&txid].clone();
        old.status = ReleaseStatus::Confirmed;
        old.fee_counted = false;
        db.insert(txid, old);
        apply(&mut db, &Change::Unspent { txid });
        let spend = Spend { txid, spent: vec![], payments: vec![] };
        assert_eq!(apply(&mut db, &Change::Spent { spend, paid: vec![], tx: None }).fees_paid, 0);
    }

    /// An expired release shows as expired, one a conflicting spend beat as
    /// conflicted; a confirmed one stays confirmed.
    #[test]
    fn an_expired_release_is_not_shown_as_conflicted() {
        let (a, b) = (proposal(3), proposal(4));
        let mut db = BTreeMap::new();
        for p in [&a, &b] {
            apply(&mut db, &Change::Live { txid: p.txid(), proposer: 0, proposal: p.clone(), at: 5 });
        }
        let u = apply(&mut db, &Change::Expired { txid: a.txid() });
        assert_eq!(u.dropped, Some(a.txid()), "its sessions are left");
        assert_eq!(db[&a.txid()].status, ReleaseStatus::Expired);
        apply(&mut db, &Change::Dropped { txid: b.txid() });
        assert_eq!(db[&b.txid()].status, ReleaseStatus::Conflicted);
    }

    /// A peg-out a release takes in again is payable: its "unpayable" mark goes.
    #[test]
    fn a_peg_out_in_a_new_release_is_payable_again() {
        let p = proposal(5);
        let mut db = BTreeMap::new();
        let u = apply(&mut db, &Change::Live { txid: p.txid(), proposer: 0, proposal: p.clone(), at: 5 });
        assert_eq!(u.payable_again, p.payouts);
    }
}
