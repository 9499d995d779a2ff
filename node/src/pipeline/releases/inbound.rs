//! Proposals from peers (and this node's own): judged, queued, accepted or refused;
//! reorged peg-outs withdrawn, split releases merged.

use super::*;

impl Pipeline {
    pub(in crate::pipeline) fn on_proposal(&mut self, from: usize, p: Proposal) -> eyre::Result<()> {
        let txid = p.txid();
        if self.releases.contains_key(&txid) || self.to_check.iter().any(|(_, q)| q.txid() == txid) {
            return Ok(());
        }
        // One known already, sent again (proposals are resent until signed): checked
        // again, as from whoever sent it first and when (it may be valid by now). Its
        // turn was that of its first arrival: a resend after the turn passed on neither
        // drops a rival kept for a merge nor counts as a refusal.
        if let Some((kept, at, first)) = self.competing.remove(&txid) {
            // Still a rival, or not valid yet: kept as it was, for its merge.
            let keep = match self.validate(&p) {
                Err(ReleaseError::PayoutLocked(_) | ReleaseError::Strands { .. }) => true,
                Err(e) => e.may_pass_later(),
                Ok(_) => false,
            };
            if keep {
                self.competing.insert(txid, (kept, at, first));
                return Ok(());
            }
            let (who, when) = self.delivery((first, at), (from, Instant::now()));
            return self.judge(who, p, when, false);
        }
        if let Some(i) = self.waiting.iter().position(|(_, w, _)| w.txid() == txid) {
            let (first, _, at) = self.waiting.remove(i);
            let (who, when) = self.delivery((first, at), (from, Instant::now()));
            return self.judge(who, p, when, false);
        }
        self.judge(from, p, Instant::now(), true)
    }

    /// Validates a proposal from `from` (received at `at`) and files it: to be checked
    /// against bitcoind's policy and signed, kept for a re-check, kept as a rival for a
    /// merge, or refused. Proposals re-checked from `waiting` go the same way.
    pub(in crate::pipeline) fn judge(
        &mut self,
        from: usize,
        p: Proposal,
        at: Instant,
        fresh: bool,
    ) -> eyre::Result<()> {
        let txid = p.txid();
        match self.validate(&p).and_then(|_| self.check_turn(from, &p, at)) {
            Ok(()) => {
                self.queue_check(from, p);
                Ok(())
            }
            Err(e) if e.may_pass_later() => {
                if fresh {
                    info!(target: "release", %txid, from, reason = %e, "proposal not valid in this node's view yet; will re-check");
                }
                let from_sender = self.waiting.iter().filter(|(f, _, _)| *f == from).count();
                let known = self.waiting.iter().any(|(_, w, _)| w.txid() == txid);
                if !known && self.waiting.len() < MAX_WAITING && from_sender < MAX_WAITING_PER_SENDER {
                    self.waiting.push((from, p, at));
                }
                Ok(())
            }
            Err(e @ (ReleaseError::PayoutLocked(_) | ReleaseError::Strands { .. })) => {
                // Another release holds its peg-outs or inputs here. Kept: if that one
                // stalls, the two are merged (see `maybe_merge`).
                info!(target: "release", %txid, from, reason = %e, "proposal competes with a release this node holds; kept for a merge");
                // Only one that is valid in itself here (vault UTXOs, certified payouts,
                // exact amounts, fee): a bogus rival must not spoil a merge.
                let locks = self.locks();
                let alone = BTreeMap::new();
                let none = BTreeSet::new();
                let view = release::View {
                    utxos: &self.utxos,
                    live: &alone,
                    paid: &locks.paid,
                    certified: &self.pegouts,
                    fee_estimate: self.fee_estimate,
                    rival_inputs: &none,
                };
                let valid_alone = release::validate(&p, &view, &self.policy).is_ok();
                // A rival from a validator out of turn is refused, not kept.
                if valid_alone && let Err(e) = self.in_turn(from, at) {
                    self.refused(from, &txid, &e);
                    return Ok(());
                }
                let from_sender = self.competing.values().filter(|(_, _, f)| *f == from).count();
                if valid_alone && self.competing.len() < MAX_WAITING && from_sender < MAX_WAITING_PER_SENDER {
                    self.competing.insert(txid, (p, at, from));
                }
                Ok(())
            }
            Err(e @ ReleaseError::NotInTurn { .. }) => {
                // Valid, but not from the validator in turn: accepted once f+1
                // validators sent it on (at least one honest one accepted it in turn).
                let takeover = self.takeover;
                self.vouched.retain(|_, (_, since)| since.elapsed() < takeover * 4);
                let f = self.n.saturating_sub(1) / 3;
                let entry = self.vouched.entry(txid).or_insert_with(|| (BTreeSet::new(), Instant::now()));
                entry.0.insert(from);
                if entry.0.len() > f {
                    self.vouched.remove(&txid);
                    info!(target: "release", %txid, from, "proposal sent on by f+1 validators: accepted as made in turn");
                    self.queue_check(from, p);
                    return Ok(());
                }
                if self.vouched.len() > MAX_WAITING
                    && let Some(oldest) = self.vouched.iter().min_by_key(|(_, (_, t))| *t).map(|(t, _)| *t)
                {
                    self.vouched.remove(&oldest);
                }
                self.refused(from, &txid, &e);
                Ok(())
            }
            Err(e) => {
                self.refused(from, &txid, &e);
                Ok(())
            }
        }
    }

    /// Files a proposal valid here for bitcoind's policy check (once, within the cap).
    pub(in crate::pipeline) fn queue_check(&mut self, from: usize, p: Proposal) {
        let txid = p.txid();
        if self.to_check.len() < MAX_WAITING && !self.to_check.iter().any(|(_, q)| q.txid() == txid) {
            self.to_check.push((from, p));
        }
    }

    /// Counts and logs a refused proposal.
    pub(in crate::pipeline) fn refused(&self, from: usize, txid: &Txid, e: &ReleaseError) {
        warn!(target: "release", %txid, from, reason = %e, "release proposal refused");
        self.metrics.releases.with_label_values(&["refused"]).inc();
        self.metrics.release_refusals.with_label_values(&[e.reason()]).inc();
    }

    /// An event reported final earlier left the canonical chain (a reorg deeper than
    /// finality; already stored as reorged): from now on it is never signed, relayed or
    /// paid. A mint being signed is abandoned; a peg-out (or refund) waiting for a
    /// release is dropped; one in a live release is left out by that release's
    /// withdrawal ([`Pipeline::maybe_withdraw`]).
    pub fn on_reorged(&mut self, event: EventId) -> eyre::Result<()> {
        if !self.reorged.insert(event) {
            return Ok(());
        }
        self.book_input(release::book::Input::Reorged(event))?;
        self.held_mints.retain(|a| a.event != event);
        self.deferred.retain(|(_, _, p)| !matches!(p, Purpose::Mint { event: e } if *e == event));
        for waiting in self.unbatched.values_mut() {
            waiting.remove(&event);
        }
        // A batch being signed with it: dropped here, its other mints batched again.
        if let Some(message) = self.in_batch.get(&event).cloned() {
            self.drop_batch(&message, true);
        }
        self.to_check.retain(|(_, p)| !p.payouts.contains(&event));
        self.waiting.retain(|(_, p, _)| !p.payouts.contains(&event));
        self.competing.retain(|_, (p, _, _)| !p.payouts.contains(&event));
        let was_payout = self.pegouts.remove(&event).is_some();
        self.pegout_seen.remove(&event);
        // Releases still being signed that pay it: no more signatures from here.
        let signing: Vec<Txid> = self
            .releases
            .iter()
            .filter(|(_, (r, _))| r.status == ReleaseStatus::Signing && r.payouts.contains(&event))
            .map(|(t, _)| *t)
            .collect();
        for t in signing {
            self.abandon_sessions(&t);
        }
        if let Some(rec) = crate::state::get_certified(&self.store, &event)?
            && let Some(message) = self.mint_message_of(&rec.attestation)
            && let Some(suite) = self.evm.as_mut()
        {
            suite.abandon(&message);
        }
        let paid_by: Vec<String> = self
            .releases
            .iter()
            .filter(|(_, (r, _))| r.status == ReleaseStatus::Confirmed && r.payouts.contains(&event))
            .map(|(t, _)| t.to_string())
            .collect();
        if !paid_by.is_empty() {
            error!(target: "release", %event, releases = ?paid_by, "a peg-out reorged out past finality was paid already");
        } else if was_payout {
            warn!(target: "release", %event, "peg-out reorged out past finality: left out of every release from now on");
        }
        self.update_pending_gauge();
        Ok(())
    }

    /// Live releases (being signed or in mempools) that pay a reorged peg-out: each is
    /// replaced by its withdrawal, the same inputs paying the others
    /// ([`release::withdraw`]). Every honest validator that saw the reorg builds the
    /// very same transaction from the same release, so they all sign one. A withdrawal
    /// that does not validate yet (bitcoind behind, say) is tried again every
    /// [`WITHDRAW_RETRY`].
    pub(in crate::pipeline) fn maybe_withdraw(&mut self) -> eyre::Result<()> {
        if self.reorged.is_empty() {
            return Ok(());
        }
        let heads: Vec<(Txid, Proposal)> = self
            .releases
            .iter()
            .filter(|(t, (r, _))| {
                matches!(r.status, ReleaseStatus::Signing | ReleaseStatus::Broadcast) && self.pays_reorged(t)
            })
            .map(|(t, (_, p))| (*t, p.clone()))
            .collect();
        self.withdraw_tried.retain(|t, _| heads.iter().any(|(h, _)| h == t));
        for (txid, p) in heads {
            if self.withdraw_tried.get(&txid).is_some_and(|at| at.elapsed() < WITHDRAW_RETRY) {
                continue;
            }
            self.withdraw_tried.insert(txid, Instant::now());
            match release::withdraw(&p, &self.reorged, &self.policy) {
                Ok(w) if self.releases.contains_key(&w.txid()) => {}
                Ok(w) => match self.validate(&w) {
                    Ok(_) => {
                        info!(target: "release", old = %txid, new = %w.txid(), payouts = w.payouts.len(), "release pays a reorged peg-out: proposing its withdrawal");
                        self.metrics.releases.with_label_values(&["withdrawn"]).inc();
                        self.send_proposal(w)?;
                    }
                    Err(e) => {
                        warn!(target: "release", %txid, error = %e, "release pays a reorged peg-out; its withdrawal does not validate yet");
                    }
                },
                Err(e) => {
                    error!(target: "release", %txid, error = %e, "release pays a reorged peg-out and cannot be withdrawn");
                }
            }
        }
        Ok(())
    }

    /// A release still being signed long after it was accepted, with a competing
    /// release for its peg-outs or inputs (a batch that split: each half of the
    /// validators holds one, neither reaches t): propose one that spends an input of
    /// each and pays all their peg-outs. It is valid beside either, conflicts with both,
    /// so at most one of them all confirms. By turns, like proposals.
    pub(in crate::pipeline) fn maybe_merge(&mut self) -> eyre::Result<()> {
        let now = now_ms();
        self.competing.retain(|_, (_, at, _)| at.elapsed() < Duration::from_secs(3_600));
        self.merged.retain(|_, at| at.elapsed() < self.merge_after);
        let stalled: Vec<Txid> = self
            .releases
            .iter()
            .filter(|(t, (r, _))| {
                let turn = r.payouts.first().map_or(0, |e| relay::rank(e, self.me, self.n)) as u32;
                let wait = self.merge_after + self.takeover * turn;
                r.status == ReleaseStatus::Signing
                    && now.saturating_sub(r.created_ms) > wait.as_millis() as u64
                    && !self.merged.contains_key(*t)
            })
            .map(|(t, _)| *t)
            .collect();
        for txid in stalled {
            let Some((_, stuck)) = self.releases.get(&txid) else { continue };
            let stuck = stuck.clone();
            let mine = release::Live::of(&stuck);
            let rivals: Vec<release::Live> = self
                .competing
                .values()
                .map(|(c, _, _)| release::Live::of(c))
                .filter(|c| !c.inputs.is_disjoint(&mine.inputs) || !c.payouts.is_disjoint(&mine.payouts))
                .collect();
            if self.bitcoind.is_none() {
                return Ok(());
            }
            let rate = self.honest_rate();
            // One rival at a time: one that does not hold up (it names what this node
            // does not see, or it touches other releases) cannot block the others.
            let mut proposed = None;
            for rival in &rivals {
                let inputs: BTreeSet<OutPoint> = mine.inputs.union(&rival.inputs).copied().collect();
                let payouts: BTreeSet<EventId> = mine.payouts.union(&rival.payouts).copied().collect();
                let required: Option<Vec<(OutPoint, Sats)>> =
                    inputs.iter().map(|op| self.utxos.get(op).map(|a| (*op, *a))).collect();
                let pays: Option<Vec<Payout>> = payouts.iter().map(|e| self.pegouts.get(e).cloned()).collect();
                let (Some(required), Some(pays)) = (required, pays) else { continue };
                let Ok(merge) = release::build_with(&required, &[], &pays, rate, &self.policy) else { continue };
                if self.validate(&merge).is_ok() {
                    info!(target: "release", stalled = %txid, merge = %merge.txid(), payouts = merge.payouts.len(), "release stalled beside a competing one: proposing their merge");
                    self.metrics.releases.with_label_values(&["merged"]).inc();
                    proposed = Some(merge);
                    break;
                }
            }
            // No rival (or none that merges): the signers are slow or some sessions gave
            // up. The same release at a slightly higher fee gets fresh sessions.
            if proposed.is_none() {
                let fee_rate = stuck.fee_rate();
                if let Some(respin) = release::bump(&stuck, rate.max(fee_rate.saturating_add(1)), &self.policy)
                    && self.validate(&respin).is_ok()
                {
                    info!(target: "release", stalled = %txid, respin = %respin.txid(), "release stalled: proposing it again at a higher fee");
                    self.metrics.releases.with_label_values(&["respun"]).inc();
                    proposed = Some(respin);
                }
            }
            if let Some(p) = proposed {
                self.merged.insert(txid, Instant::now());
                self.propose(p)?;
            }
        }
        Ok(())
    }

    pub(in crate::pipeline) fn retry_waiting(&mut self) -> eyre::Result<()> {
        let waiting = std::mem::take(&mut self.waiting);
        for (from, p, at) in waiting {
            if at.elapsed() > Duration::from_secs(300) || self.releases.contains_key(&p.txid()) {
                continue;
            }
            // As when it arrived: a rival by now (another release took its peg-outs)
            // is kept for a merge or refused out of turn, not refused for competing.
            self.judge(from, p, at, false)?;
        }
        Ok(())
    }

    /// Records a validated proposal (locking its inputs and payouts) and signs it.
    pub(in crate::pipeline) fn accept(&mut self, p: Proposal, proposer: usize) -> eyre::Result<()> {
        let txid = p.txid();
        if self.releases.contains_key(&txid) {
            return Ok(());
        }
        // The live releases it touches: it conflicts with each and pays all they pay.
        let mine = release::Live::of(&p);
        let replaced: Vec<Txid> = self
            .locks()
            .live
            .into_iter()
            .filter(|(t, l)| {
                *t != txid && (!l.inputs.is_disjoint(&mine.inputs) || !l.payouts.is_disjoint(&mine.payouts))
            })
            .map(|(t, _)| t)
            .collect();
        let rec = ReleaseRecord::signing(&p, proposer, now_ms(), self.policy.peg_out_fee, replaced.first());
        info!(target: "release", %txid, proposer, payouts = p.payouts.len(), inputs = p.tx.input.len(), fee = rec.fee_sats, replaces = ?rec.replaces, "release validated: signing");
        self.releases.insert(txid, (rec, p));
        for old in replaced {
            if let Some((r, _)) = self.releases.get_mut(&old)
                && r.status != ReleaseStatus::Replaced
            {
                let was_signing = r.status == ReleaseStatus::Signing;
                r.status = ReleaseStatus::Replaced;
                self.save_release(&old)?;
                if was_signing {
                    self.abandon_sessions(&old);
                }
            }
        }
        self.save_release(&txid)?;
        self.start_release_sessions(txid)
    }
}
