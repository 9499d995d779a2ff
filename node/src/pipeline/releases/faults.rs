//! A release proposer's test faults ([`ReleaseFault`]): proposals honest signers must
//! refuse, sent beside (or instead of) what the book proposes, for the tests that show
//! they do. Builds with the `test-faults` feature only set a fault.

use super::*;

impl Pipeline {
    /// Peg-outs certified here that no spend at depth paid (`with_promised`: also those
    /// a release the book holds pays), oldest first, and the vault UTXOs no such release
    /// spends.
    fn book_unpaid(&self, with_promised: bool) -> (Vec<Payout>, Vec<(OutPoint, Sats)>) {
        let b = &self.book;
        let mut taken = b.book.paid_events();
        let mut spent = BTreeSet::new();
        for (_, _, p) in b.book.live() {
            spent.extend(p.tx.input.iter().map(|i| i.previous_output));
            if !with_promised {
                taken.extend(p.payouts.iter().copied());
            }
        }
        let mut seen: Vec<(&Payout, u64)> = b.book.certified().filter(|(p, _)| !taken.contains(&p.event)).collect();
        seen.sort_by_key(|(p, at)| (*at, p.event.to_bytes()));
        seen.truncate(release::MAX_PAYOUTS);
        let payouts = seen.into_iter().map(|(p, _)| p.clone()).collect();
        let free = self.utxos.iter().filter(|(op, _)| !spent.contains(op)).map(|(op, a)| (*op, *a)).collect();
        (payouts, free)
    }

    /// Once a tick: the proposals a faulty proposer sends beside the book's.
    pub(in crate::pipeline) fn book_faults(&mut self) -> eyre::Result<()> {
        if !self.bitcoin_synced || self.last_faulty.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return Ok(());
        }
        match self.release_fault {
            // At once, whatever the turn, at ten times the honest rate.
            Some(ReleaseFault::GreedyFee) => {
                let (payouts, free) = self.book_unpaid(false);
                if payouts.is_empty() {
                    return Ok(());
                }
                let greedy = self.honest_rate().saturating_mul(10).min(self.policy.ceiling_sat_per_vb);
                self.send_faulty(release::build(&free, &payouts, greedy, &self.policy), "greedy fee")
            }
            // Well clear of its own turn, on every validator's clock: every peg-out not
            // paid, promised or not, from the smallest free UTXO.
            Some(ReleaseFault::OutOfTurn) => {
                let (now, margin) = (now_ms(), 2 * self.turn_slack_ms());
                let turns = [self.turn_at(now.saturating_sub(margin)), self.turn_at(now), self.turn_at(now + margin)];
                if turns.contains(&self.me) {
                    return Ok(());
                }
                let (payouts, free) = self.book_unpaid(true);
                if payouts.is_empty() {
                    return Ok(());
                }
                let smallest: Vec<(OutPoint, Sats)> = free.into_iter().min_by_key(|(_, a)| *a).into_iter().collect();
                let rate = self.honest_rate();
                self.send_faulty(release::build(&smallest, &payouts, rate, &self.policy), "out of turn")
            }
            _ => Ok(()),
        }
    }

    /// How a faulty proposer sends the book's fresh proposal `p`: not at all (it sends
    /// its own faulty ones instead), or split with a twin from other inputs, each to a
    /// part of the validators. None: sent as the book says.
    pub(in crate::pipeline) fn book_faulty_send(&mut self, p: &Proposal) -> Option<()> {
        match self.release_fault? {
            ReleaseFault::GreedyFee | ReleaseFault::OutOfTurn => Some(()),
            ReleaseFault::SplitProposals => {
                let (_, free) = self.book_unpaid(true);
                let used: BTreeSet<OutPoint> = p.tx.input.iter().map(|i| i.previous_output).collect();
                let rest: Vec<(OutPoint, Sats)> = free.into_iter().filter(|(op, _)| !used.contains(op)).collect();
                let payouts: Option<Vec<Payout>> =
                    p.payouts.iter().map(|e| self.book.book.certified_payout(e).map(|(c, _)| c.clone())).collect();
                let twin = release::build(&rest, &payouts?, p.fee_rate(), &self.policy).ok()?;
                self.send_split(p, &twin);
                Some(())
            }
            ReleaseFault::NoPaymentBound => None,
        }
    }

    /// `p` to a minority of the others, `twin` to the rest.
    fn send_split(&self, p: &Proposal, twin: &Proposal) {
        warn!(target: "release", first = %p.txid(), twin = %twin.txid(), "TEST FAULT: splitting a release proposal between the validators");
        let others: Vec<usize> = (0..self.n).filter(|i| *i != self.me).collect();
        let first_side = (self.n / 2).saturating_sub(1);
        for (k, i) in others.into_iter().enumerate() {
            let mut payload = vec![TAG_RELEASE];
            payload.extend(if k < first_side { p.encode() } else { twin.encode() });
            self.send(i, payload);
        }
    }

    /// Sends a proposal to the others, without the book judging it.
    fn send_faulty(&mut self, p: Result<Proposal, ReleaseError>, fault: &str) -> eyre::Result<()> {
        self.last_faulty = Some(Instant::now());
        let Ok(p) = p else { return Ok(()) };
        warn!(target: "release", txid = %p.txid(), fee = p.fee(), fault, "TEST FAULT: sending a release proposal honest signers must refuse");
        self.send_to_peers(&[&[TAG_RELEASE][..], &p.encode()].concat());
        Ok(())
    }

    /// The fee rate an honest proposer proposes at: its estimate, or the floor without one.
    fn honest_rate(&self) -> u64 {
        self.fee_estimate.unwrap_or(self.policy.floor_sat_per_vb)
    }
}
