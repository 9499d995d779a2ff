//! This node's own release proposals, in its turn.

use super::*;

impl Pipeline {
    /// Sends the releases still being signed to the others again.
    pub(in crate::pipeline) fn resend_proposals(&mut self) {
        if self.last_resend.elapsed() < self.resend_every {
            return;
        }
        self.last_resend = Instant::now();
        // Every release still being signed, not only this node's: a validator that
        // missed one (or holds a competing one) learns of it.
        let mine: Vec<Vec<u8>> = self
            .releases
            .values()
            .filter(|(r, _)| r.status == ReleaseStatus::Signing)
            .map(|(_, p)| {
                let mut payload = vec![TAG_RELEASE];
                payload.extend(p.encode());
                payload
            })
            .collect();
        for payload in mine {
            self.send_to_peers(&payload);
        }
    }

    /// Test fault: `p` to this node and a minority, a twin from other inputs to the rest.
    pub(in crate::pipeline) fn propose_split(
        &mut self,
        p: Proposal,
        available: &[(OutPoint, Sats)],
        payouts: &[Payout],
        rate: u64,
    ) -> eyre::Result<()> {
        let used: BTreeSet<OutPoint> = p.tx.input.iter().map(|i| i.previous_output).collect();
        let rest: Vec<(OutPoint, Sats)> = available.iter().filter(|(op, _)| !used.contains(op)).copied().collect();
        let Ok(twin) = release::build(&rest, payouts, rate, &self.policy) else { return self.propose(p) };
        self.send_split(&p, &twin);
        self.last_proposal = Some(Instant::now());
        self.accept(p, self.me)
    }

    /// Test fault: `p` to a minority of the others, `twin` to the rest.
    pub(in crate::pipeline) fn send_split(&self, p: &Proposal, twin: &Proposal) {
        warn!(target: "release", first = %p.txid(), twin = %twin.txid(), "TEST FAULT: splitting a release proposal between the validators");
        let others: Vec<usize> = (0..self.n).filter(|i| *i != self.me).collect();
        let first_side = (self.n / 2).saturating_sub(1);
        for (k, i) in others.into_iter().enumerate() {
            let mut payload = vec![TAG_RELEASE];
            payload.extend(if k < first_side { p.encode() } else { twin.encode() });
            self.send(i, payload);
        }
    }

    /// Test fault: every tick out of this node's turn, a release of the peg-outs not
    /// yet paid (promised to a live release or not), from the smallest free vault UTXO
    /// (never the one the validator in turn spends, so that it is never taken for a
    /// replacement of its release). In its turn it proposes nothing.
    pub(in crate::pipeline) fn propose_out_of_turn(&mut self) -> eyre::Result<()> {
        let locks = self.locks();
        let payouts: Vec<Payout> = self
            .pegout_seen
            .keys()
            .filter(|e| !locks.paid.contains(e))
            .filter_map(|e| self.pegouts.get(e).cloned())
            .collect();
        if payouts.is_empty() {
            return Ok(());
        }
        let inputs = locks.inputs();
        let smallest: Vec<(OutPoint, Sats)> = self
            .utxos
            .iter()
            .filter(|(op, _)| !inputs.contains(op))
            .min_by_key(|(_, a)| **a)
            .map(|(o, a)| (*o, *a))
            .into_iter()
            .collect();
        let rate = self.honest_rate();
        self.send_faulty(release::build(&smallest, &payouts, rate, &self.policy), "out of turn")
    }

    /// Test faults: sends a proposal to the others without validating or accepting it.
    pub(in crate::pipeline) fn send_faulty(
        &mut self,
        p: Result<Proposal, ReleaseError>,
        fault: &str,
    ) -> eyre::Result<()> {
        self.last_proposal = Some(Instant::now());
        let Ok(p) = p else { return Ok(()) };
        warn!(target: "release", txid = %p.txid(), fee = p.fee(), fault, "TEST FAULT: sending a release proposal honest signers must refuse");
        self.send_to_peers(&[&[TAG_RELEASE][..], &p.encode()].concat());
        Ok(())
    }

    /// The fee rate this node proposes at: its estimate, or the floor without one.
    pub(in crate::pipeline) fn honest_rate(&self) -> u64 {
        self.fee_estimate.unwrap_or(self.policy.floor_sat_per_vb)
    }

    pub(in crate::pipeline) fn propose(&mut self, p: Proposal) -> eyre::Result<()> {
        if self.releases.contains_key(&p.txid()) {
            return Ok(());
        }
        if let Err(e) = self.validate(&p) {
            warn!(target: "release", reason = %e, "own release proposal does not validate: not sent");
            return Ok(());
        }
        self.send_proposal(p)
    }

    /// Sends `p` (validated here already) to the others and signs it.
    pub(in crate::pipeline) fn send_proposal(&mut self, p: Proposal) -> eyre::Result<()> {
        self.send_to_peers(&[&[TAG_RELEASE][..], &p.encode()].concat());
        self.last_proposal = Some(Instant::now());
        self.accept(p, self.me)
    }

    /// After a proposal that could not be made: the next one in five seconds, not one.
    pub(in crate::pipeline) fn back_off_proposals(&mut self) {
        self.proposals_resume = Some(Instant::now() + PROPOSAL_BACK_OFF);
    }

    /// Proposes a release of the peg-outs waiting, oldest first, when this node holds
    /// the turn ([`Pipeline::turn_at`]) and a batch is due: [`release::MAX_PAYOUTS`]
    /// wait, or the oldest waited [`BATCH_WAIT`] and no other came for as long, or the
    /// oldest waited [`BATCH_MAX_WAIT`]. So a burst is paid in full releases, one after
    /// another, and a lone peg-out a moment after it was certified.
    pub(in crate::pipeline) fn maybe_propose(&mut self) -> eyre::Result<()> {
        let faulty_now = self.release_fault == Some(ReleaseFault::GreedyFee);
        if self.policy.vault_script.is_empty()
            || !self.bitcoin_synced
            || self.asked.own
            || self.release_fault == Some(ReleaseFault::OutOfTurn)
            || self.last_proposal.is_some_and(|t| t.elapsed() < Duration::from_secs(1))
            || self.proposals_resume.is_some_and(|t| Instant::now() < t)
            || (!faulty_now && !self.may_propose_now())
        {
            return Ok(());
        }
        let locks = self.locks();
        let (claimed_inputs, claimed_payouts) = self.claimed();
        let (mut locked_inputs, locked_payouts) = (locks.inputs(), locks.payouts());
        locked_inputs.extend(claimed_inputs);
        let mut unpaid: Vec<(&EventId, &Instant)> = self
            .pegout_seen
            .iter()
            .filter(|(e, _)| {
                !locked_payouts.contains(e)
                    && !claimed_payouts.contains(e)
                    && self.bridge_not_ready(e.chain.0).is_none()
            })
            .collect();
        if unpaid.is_empty() {
            return Ok(());
        }
        unpaid.sort_by_key(|(e, at)| (**at, e.to_bytes()));
        // No more payments of a class than the chain leaves room for (oldest first).
        let mut budget = release::payment_budget(&self.pegouts, self.paid_on_chain(), &self.promised(), &self.policy);
        unpaid.retain(|(e, _)| {
            let class = self.pegouts.get(e).and_then(|p| release::class_of(p, &self.policy));
            match class.and_then(|c| budget.get_mut(&c)) {
                Some(b) if *b > 0 => {
                    *b -= 1;
                    true
                }
                _ => false,
            }
        });
        if unpaid.is_empty() {
            return Ok(());
        }
        self.unfunded.retain(|e, _| self.pegout_seen.contains_key(e));
        // Peg-outs the free funds could not cover last time do not set the pace: the
        // others are batched as usual.
        let mut pace: Vec<Instant> =
            unpaid.iter().filter(|(e, _)| !self.unfunded.contains_key(*e)).map(|(_, at)| **at).collect();
        if pace.is_empty() {
            pace = unpaid.iter().map(|(_, at)| **at).collect();
        }
        let (Some(&oldest), Some(&newest)) = (pace.iter().min(), pace.iter().max()) else { return Ok(()) };
        // One left out for DEFER_MAX while the vault as a whole holds enough for it:
        // newer peg-outs wait, so that returning change builds up for it rather than
        // paying them first for ever.
        let starved: Option<Payout> = if self.unfunded.values().any(|t| t.elapsed() >= DEFER_MAX) {
            let vault_total = self.utxos.values().map(|a| a.0).fold(0, u64::saturating_add);
            unpaid
                .iter()
                .filter(|(e, _)| self.unfunded.get(*e).is_some_and(|t| t.elapsed() >= DEFER_MAX))
                .filter_map(|(e, _)| self.pegouts.get(*e))
                .find(|p| p.amount.0 <= vault_total)
                .cloned()
        } else {
            None
        };
        let full = unpaid.len() >= release::MAX_PAYOUTS;
        let due = full
            || (oldest.elapsed() >= BATCH_WAIT && newest.elapsed() >= BATCH_WAIT)
            || oldest.elapsed() >= BATCH_MAX_WAIT;
        // A batch that is not full waits for the last proposal's checks to settle.
        let settled = full || self.last_proposal.is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
        if !(faulty_now || due && settled) {
            return Ok(());
        }
        unpaid.truncate(release::MAX_PAYOUTS);
        let payouts: Vec<Payout> = match &starved {
            Some(p) => vec![p.clone()],
            None => unpaid.iter().filter_map(|(e, _)| self.pegouts.get(e).cloned()).collect(),
        };
        let available: Vec<(OutPoint, Sats)> =
            self.utxos.iter().filter(|(op, _)| !locked_inputs.contains(op)).map(|(op, a)| (*op, *a)).collect();
        if self.bitcoind.is_none() {
            return Ok(());
        }
        let rate = self.honest_rate();
        if self.release_fault == Some(ReleaseFault::GreedyFee) {
            let greedy = rate.saturating_mul(10).min(self.policy.ceiling_sat_per_vb);
            return self.send_faulty(release::build(&available, &payouts, greedy, &self.policy), "greedy fee");
        }
        let built = match &starved {
            Some(big) => {
                info!(target: "release", event = %big.event, amount = big.amount.0, "a peg-out the free funds could not cover waited too long: newer ones wait for it");
                release::build(&available, &payouts, rate, &self.policy)
            }
            None => release::build_fundable(&available, &payouts, rate, &self.policy),
        };
        if let Ok(p) = &built {
            for e in payouts.iter().map(|q| q.event) {
                if p.payouts.contains(&e) {
                    self.unfunded.remove(&e);
                } else {
                    self.unfunded.entry(e).or_insert_with(Instant::now);
                }
            }
        }
        match built {
            Ok(p) if self.release_fault == Some(ReleaseFault::SplitProposals) => {
                self.propose_split(p, &available, &payouts, rate)
            }
            Ok(p) => {
                // Sent once bitcoind's policy takes it ([`Pipeline::on_own_checked`]).
                self.check_own(p);
                Ok(())
            }
            Err(e) => {
                self.back_off_proposals();
                warn!(target: "release", error = %e, "cannot build a release yet");
                Ok(())
            }
        }
    }
}
