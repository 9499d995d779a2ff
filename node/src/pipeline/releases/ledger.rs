//! The release ledger: the releases held here, the locks they put on UTXOs and
//! peg-outs, and the vault's spends at depth (the only source of "paid").

use super::*;

impl Pipeline {
    /// Certified peg-outs not paid at depth: per payment class, the certified ones less
    /// the vault's final payments of that class on chain.
    pub(in crate::pipeline) fn update_pending_gauge(&self) {
        let unpaid = release::payment_budget(&self.pegouts, self.paid_on_chain(), &BTreeSet::new(), &self.policy);
        self.metrics.releases_pending.set(unpaid.values().sum::<usize>() as i64);
    }

    /// Writes a release and, in the same batch, the index from each of its payouts to
    /// the releases paying it (so the API finds them without a scan).
    pub(in crate::pipeline) fn save_release(&self, txid: &Txid) -> eyre::Result<()> {
        if let Some((rec, _)) = self.releases.get(txid) {
            let mut b = Batch::new();
            put_release(&self.store, &mut b, rec)?;
            self.store.commit(b)?;
        }
        Ok(())
    }

    /// Inputs and payouts held by releases that may still confirm, and what is paid.
    pub(in crate::pipeline) fn locks(&self) -> Locks {
        let mut live = BTreeMap::new();
        let mut paid = self.paid_events.clone();
        for (txid, (rec, p)) in &self.releases {
            match rec.status {
                ReleaseStatus::Signing | ReleaseStatus::Broadcast | ReleaseStatus::Replaced => {
                    live.insert(*txid, release::Live::of(p));
                }
                ReleaseStatus::Confirmed => paid.extend(rec.payouts.iter().copied()),
                ReleaseStatus::Conflicted => {}
            }
        }
        Locks { live, paid }
    }

    pub(in crate::pipeline) fn validate(&self, p: &Proposal) -> Result<Vec<[u8; 32]>, ReleaseError> {
        let locks = self.locks();
        // Rivals it may merge: their inputs count as needed, like those of live releases.
        let rival_inputs: BTreeSet<OutPoint> =
            self.competing.values().flat_map(|(c, _, _)| c.tx.input.iter().map(|i| i.previous_output)).collect();
        // A replacement's band is centred on what the release it replaces paid, when
        // that is above this node's estimate (otherwise RBF could bump only once).
        let mine = release::Live::of(p);
        let replaced_rate = locks
            .live
            .iter()
            .filter(|(_, l)| !l.inputs.is_disjoint(&mine.inputs))
            .filter_map(|(t, _)| self.releases.get(t).map(|(r, _)| r.fee_rate_sat_per_vb))
            .max();
        let fee_estimate = match (self.fee_estimate, replaced_rate) {
            (Some(e), Some(r)) => Some(e.max(r)),
            (e, r) => e.or(r),
        };
        let view = release::View {
            utxos: &self.utxos,
            live: &locks.live,
            paid: &locks.paid,
            certified: &self.pegouts,
            fee_estimate,
            rival_inputs: &rival_inputs,
        };
        if !self.bitcoin_synced {
            return Err(ReleaseError::NotSynced);
        }
        // The withdrawal of a live release that pays a reorged peg-out: exactly the one
        // transaction every honest validator builds from it, valid at once (the release
        // it replaces must not confirm), without the fee band (its fee is the old one
        // plus the incremental relay fee). Anything else goes the ordinary way.
        if let Some(old) = self.withdrawal_base(p) {
            return release::validate_withdrawal(p, old, &self.reorged, &view, &self.policy);
        }
        // Nothing burned on a bridge that holds another key is paid.
        if let Some(e) = p.payouts.iter().find(|e| self.bridge_not_ready(e.chain.0).is_some()) {
            return Err(ReleaseError::SourceNotReady(*e));
        }
        let hashes = release::validate(p, &view, &self.policy)?;
        // A release that supersedes live ones only once they had their chance: signing
        // for `merge_after`, or waiting in the mempool for `rbf_after`; and, for the same
        // inputs, only at a higher fee. (Otherwise any validator could keep replacing
        // releases before they are signed.)
        let (now, mine, txid) = (now_ms(), release::Live::of(p), p.txid());
        for (t, l) in &locks.live {
            if *t == txid || (l.inputs.is_disjoint(&mine.inputs) && l.payouts.is_disjoint(&mine.payouts)) {
                continue;
            }
            let Some((rec, q)) = self.releases.get(t) else { continue };
            let (since, wait) = match rec.status {
                ReleaseStatus::Signing => (rec.created_ms, self.merge_after),
                ReleaseStatus::Broadcast => (rec.broadcast_ms.unwrap_or(rec.created_ms), self.rbf_after),
                _ => continue,
            };
            if now.saturating_sub(since) < wait.as_millis() as u64 {
                return Err(ReleaseError::TooEarly(*t));
            }
            if l.inputs == mine.inputs && p.fee() <= q.fee() {
                return Err(ReleaseError::NoFeeIncrease(*t));
            }
        }
        let own: BTreeSet<EventId> = p.payouts.iter().copied().collect();
        let promised: BTreeSet<EventId> = self.promised().difference(&own).copied().collect();
        release::check_budget(p, &self.pegouts, self.paid_on_chain(), &promised, &self.policy)?;
        Ok(hashes)
    }

    /// Final payments of each class on chain (the vault's spends at depth).
    pub(in crate::pipeline) fn paid_on_chain(&self) -> &BTreeMap<release::PaymentClass, usize> {
        static NONE: BTreeMap<release::PaymentClass, usize> = BTreeMap::new();
        if self.release_fault == Some(ReleaseFault::NoPaymentBound) { &NONE } else { &self.paid }
    }

    /// Counts (or, with `undo`, uncounts) the payments of a vault spend by class.
    pub(in crate::pipeline) fn count_payments(
        paid: &mut BTreeMap<release::PaymentClass, usize>,
        outputs: &[SpendOutput],
        undo: bool,
    ) {
        for o in outputs {
            let n = paid.entry((ScriptBuf::from(o.script_pubkey.clone()), o.amount.0)).or_default();
            *n = if undo { n.saturating_sub(1) } else { n.saturating_add(1) };
        }
    }

    /// Peg-outs promised to releases that are not on chain (yet, or ever).
    pub(in crate::pipeline) fn promised(&self) -> BTreeSet<EventId> {
        self.releases
            .values()
            .filter(|(r, p)| {
                r.status != ReleaseStatus::Conflicted && !self.onchain.contains_key(&display_txid(&p.txid()))
            })
            .flat_map(|(r, _)| r.payouts.iter().copied())
            .collect()
    }

    /// A vault spend at depth, from the Bitcoin adapter (already stored).
    ///
    /// Whatever this node did or did not follow: a release of its own that the spend
    /// is becomes confirmed, and every live release sharing one of its inputs can never
    /// confirm (conflicted), so that its payouts are not held by a dead release.
    pub fn on_vault_spend(&mut self, spend: VaultSpend) -> eyre::Result<()> {
        let txid = Txid::from_byte_array(internal_order(&spend.txid));
        let held = self.book_holds(&txid);
        self.book_spend(&spend)?;
        let mut changed = Vec::new();
        match self.releases.get_mut(&txid) {
            None if held => {}
            None => {
                warn!(target: "release", txid = %spend.txid, payouts = spend.payouts.len(), "a vault spend this node has no release for (restored database, or a release it never validated): its payments count against the peg-outs they match");
            }
            Some((rec, p)) if rec.status != ReleaseStatus::Confirmed => {
                rec.status = ReleaseStatus::Confirmed;
                rec.confirmations = rec.confirmations.max(self.confirmations);
                self.metrics.releases.with_label_values(&["confirmed"]).inc();
                self.metrics.vault_fees_paid.inc_by(p.fee());
                info!(target: "release", %txid, payouts = rec.payouts.len(), "release final on chain: peg-outs paid");
                changed.push(txid);
            }
            Some(_) => {}
        }
        let spent: BTreeSet<OutPoint> = spend.spent.iter().copied().collect();
        let dead = self.mark_conflicts(&spent, &txid);
        for t in &dead {
            self.abandon_sessions(t);
        }
        changed.extend(dead);
        Self::count_payments(&mut self.paid, &spend.payouts, false);
        if let Some(before) = self.onchain.insert(spend.txid, spend.payouts) {
            Self::count_payments(&mut self.paid, &before, true);
        }
        for t in changed {
            self.save_release(&t)?;
        }
        self.retire_finished();
        self.update_pending_gauge();
        Ok(())
    }

    /// The releases in memory with one of `statuses`.
    pub(in crate::pipeline) fn releases_in(&self, statuses: &[ReleaseStatus]) -> Vec<Txid> {
        self.releases.iter().filter(|(_, (r, _))| statuses.contains(&r.status)).map(|(t, _)| *t).collect()
    }

    /// Finished releases leave memory (their records stay in the store); the peg-outs
    /// the confirmed ones paid are kept.
    pub(in crate::pipeline) fn retire_finished(&mut self) {
        for t in self.releases_in(&[ReleaseStatus::Confirmed, ReleaseStatus::Conflicted]) {
            if let Some((r, _)) = self.releases.remove(&t)
                && r.status == ReleaseStatus::Confirmed
            {
                self.paid_events.extend(r.payouts);
            }
        }
    }

    /// A vault spend left the best chain below its depth (already removed from the store).
    pub fn on_vault_spend_reorged(&mut self, txid: &TxHash) -> eyre::Result<()> {
        if let Some(outputs) = self.onchain.remove(txid) {
            Self::count_payments(&mut self.paid, &outputs, true);
        }
        self.update_pending_gauge();
        self.book_input(release::book::Input::SpendReorged { txid: Txid::from_byte_array(internal_order(txid)) })
    }

    /// Where the Bitcoin adapter stands: releases are validated only once it has seen
    /// every final block (a node catching up would not know what the vault paid yet).
    pub fn set_bitcoin_progress(&mut self, cursor: u64, finalized: u64) -> eyre::Result<()> {
        let synced = cursor >= finalized;
        if synced != self.bitcoin_synced {
            info!(target: "release", cursor, finalized, synced, "Bitcoin view {}", if synced { "caught up: releases may be signed" } else { "catching up: no release is signed meanwhile" });
        }
        self.bitcoin_synced = synced;
        if !synced {
            self.book_synced()?;
        }
        Ok(())
    }

    /// Inputs and peg-outs of peers' proposals, sent in turn, that this node holds but
    /// has not signed yet (it has not certified every peg-out yet, or bitcoind's policy
    /// check is pending). Its own proposals leave them alone for two `takeover`s, so
    /// that the turn passing on does not race the releases the last proposer just sent.
    pub(in crate::pipeline) fn claimed(&self) -> (BTreeSet<OutPoint>, BTreeSet<EventId>) {
        let waiting = self
            .waiting
            .iter()
            .filter(|(from, _, at)| at.elapsed() < self.takeover * 2 && self.in_turn(*from, *at).is_ok())
            .map(|(_, p, _)| p);
        let mut inputs = BTreeSet::new();
        let mut payouts = BTreeSet::new();
        // Only what this node could spend or pay itself: vault UTXOs it knows and
        // peg-outs it has certified (the rest it would not propose anyway).
        for p in waiting.chain(self.to_check.iter().map(|(_, p)| p)) {
            inputs.extend(p.tx.input.iter().map(|i| i.previous_output).filter(|op| self.utxos.contains_key(op)));
            payouts.extend(p.payouts.iter().copied().filter(|e| self.pegouts.contains_key(e)));
        }
        (inputs, payouts)
    }

    /// Whether release `txid` pays an event reorged out past finality: it must not
    /// confirm, so it is no longer signed, broadcast or bumped here.
    pub(in crate::pipeline) fn pays_reorged(&self, txid: &Txid) -> bool {
        self.releases.get(txid).is_some_and(|(r, _)| r.payouts.iter().any(|e| self.reorged.contains(e)))
    }

    /// The live release (being signed, broadcast or replaced) whose withdrawal `p` is,
    /// if it is one: same inputs, and exactly [`release::withdraw`] of it.
    pub(in crate::pipeline) fn withdrawal_base(&self, p: &Proposal) -> Option<&Proposal> {
        if self.reorged.is_empty() {
            return None;
        }
        let inputs = release::Live::of(p).inputs;
        self.releases.iter().find_map(|(t, (r, q))| {
            let live = matches!(r.status, ReleaseStatus::Signing | ReleaseStatus::Broadcast | ReleaseStatus::Replaced);
            (live && self.pays_reorged(t) && release::Live::of(q).inputs == inputs)
                .then_some(q)
                .filter(|q| release::withdraw(q, &self.reorged, &self.policy).is_ok_and(|w| w == *p))
        })
    }
}
