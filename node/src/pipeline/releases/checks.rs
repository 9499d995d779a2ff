//! What the pipeline asks bitcoind for the release path and what it makes of the
//! answers ([`driver`](super::driver) makes the calls): fee estimates, relay-policy
//! checks of proposals before they are signed or sent, and the answers for the
//! releases it follows ([`signing`](super::signing)).

use super::{
    driver::{Answer, Ask, CheckFor, Verdict},
    *,
};

/// bitcoind's fee estimate is read again once it is this old.
const FEE_ESTIMATE_EVERY: Duration = Duration::from_secs(10);

impl Pipeline {
    /// The answers of the bitcoind driver, for the run loop to hand to
    /// [`Pipeline::on_bitcoind`] (None without bitcoind, or once taken).
    pub(crate) fn take_bitcoind_answers(&mut self) -> Option<mpsc::Receiver<Answer>> {
        self.bitcoind_answers.take()
    }

    /// One answer of the bitcoind driver.
    pub(crate) fn on_bitcoind(&mut self, answer: Answer) -> eyre::Result<()> {
        match answer {
            Answer::FeeEstimate(r) => {
                self.asked.fee = false;
                match r {
                    Ok(rate) => {
                        self.fee_estimate = Some(rate);
                        self.fee_estimated_at = Some(Instant::now());
                    }
                    // The last estimate stands until bitcoind answers again.
                    Err(e) => debug!(target: "release", error = %e, "fee estimate unavailable"),
                }
                Ok(())
            }
            Answer::Checked(why, p, verdict) => match why {
                CheckFor::Peer(from) => self.on_peer_checked(from, *p, verdict),
                CheckFor::Own => self.on_own_checked(*p, verdict),
                CheckFor::Book => self.book_checked(&p, verdict),
            },
            Answer::Confirmations(confs) => self.on_confirmations(confs),
            Answer::Broadcast(txid, sent) if self.book_engine() => self.book_broadcast(txid, sent),
            Answer::Broadcast(txid, sent) => self.on_broadcast(txid, sent),
        }
    }

    /// Queues `ask` with the driver; false without bitcoind or with its queue full.
    pub(in crate::pipeline) fn ask(&self, ask: Ask) -> bool {
        self.bitcoind.as_ref().is_some_and(|d| d.ask(ask))
    }

    /// Asks for bitcoind's fee estimate once the last is older than ten seconds (one
    /// ask at a time). A failed read keeps the last estimate.
    pub(in crate::pipeline) fn refresh_fee_estimate(&mut self) {
        if self.asked.fee || self.fee_estimated_at.is_some_and(|t| t.elapsed() < FEE_ESTIMATE_EVERY) {
            return;
        }
        self.asked.fee = self.ask(Ask::FeeEstimate);
    }

    /// Each payout of `p` alone, in a copy of the release that pays only it: what
    /// bitcoind is asked when its policy refuses `p`, to tell which payout it blames.
    pub(in crate::pipeline) fn probes(&self, p: &Proposal) -> Vec<(EventId, bitcoin::Transaction)> {
        (0..p.payouts.len())
            .filter_map(|i| Some((*p.payouts.get(i)?, release::payout_probe(p, i, &self.policy)?)))
            .collect()
    }

    /// `p` (not signed by anyone) is refused by bitcoind's policy for `reason`: the
    /// payouts refused alone are set apart with the reason. Returns how many.
    pub(in crate::pipeline) fn blame(
        &mut self,
        p: &Proposal,
        reason: &str,
        blamed: Vec<(EventId, String)>,
    ) -> eyre::Result<usize> {
        if blamed.is_empty() {
            error!(target: "release", txid = %p.txid(), %reason, "bitcoind's policy refuses the release, and no payout alone: not signed");
        }
        let n = blamed.len();
        for (e, why) in blamed {
            self.set_apart(e, format!("Bitcoin Core's relay policy refuses its output: {why}"))?;
        }
        Ok(n)
    }

    /// Proposals from peers that validated here: each asked of bitcoind's policy once
    /// (they stay in `to_check` until the answer).
    pub(in crate::pipeline) fn check_accepted(&mut self) {
        let releases = &self.releases;
        self.to_check.retain(|(_, p)| !releases.contains_key(&p.txid()));
        let todo: Vec<(usize, Proposal)> =
            self.to_check.iter().filter(|(_, p)| !self.asked.checks.contains(&p.txid())).cloned().collect();
        for (from, p) in todo {
            let (txid, probes) = (p.txid(), self.probes(&p));
            if !self.ask(Ask::Check { why: CheckFor::Peer(from), proposal: p, probes }) {
                break;
            }
            self.asked.checks.insert(txid);
        }
    }

    fn on_peer_checked(&mut self, from: usize, p: Proposal, verdict: Result<Verdict, String>) -> eyre::Result<()> {
        let txid = p.txid();
        self.asked.checks.remove(&txid);
        // Dropped meanwhile (it pays a peg-out reorged away, or it was accepted).
        let Some(at) = self.to_check.iter().position(|(f, q)| *f == from && q.txid() == txid) else { return Ok(()) };
        match verdict {
            Ok(Verdict::Passes) => {
                self.to_check.remove(at);
            }
            Ok(Verdict::Refused { reason, blamed }) => {
                self.to_check.remove(at);
                let blamed = self.blame(&p, &reason, blamed)?;
                warn!(target: "release", %txid, from, %reason, blamed, "release refused by bitcoind's relay policy: not signed");
                self.metrics.release_refusals.with_label_values(&["mempool_policy"]).inc();
                return Ok(());
            }
            Err(e) => {
                // Not signed on bitcoind's silence: asked again next tick.
                debug!(target: "release", %txid, error = %e, "testmempoolaccept unavailable: the proposal waits");
                return Ok(());
            }
        }
        if self.releases.contains_key(&txid) {
            return Ok(());
        }
        // The view may have moved while bitcoind was asked.
        match self.validate(&p) {
            Ok(_) => self.accept(p, from),
            Err(e) => {
                self.refused(from, &txid, &e);
                Ok(())
            }
        }
    }

    /// Asks bitcoind's policy about this node's own proposal `p`; no other is made
    /// until the answer ([`Pipeline::on_own_checked`]).
    pub(in crate::pipeline) fn check_own(&mut self, p: Proposal) {
        let probes = self.probes(&p);
        if self.ask(Ask::Check { why: CheckFor::Own, proposal: p, probes }) {
            self.asked.own = true;
        } else {
            self.back_off_proposals();
        }
    }

    fn on_own_checked(&mut self, p: Proposal, verdict: Result<Verdict, String>) -> eyre::Result<()> {
        self.asked.own = false;
        match verdict {
            Ok(Verdict::Passes) => {}
            Ok(Verdict::Refused { reason, blamed }) => {
                let blamed = self.blame(&p, &reason, blamed)?;
                warn!(target: "release", txid = %p.txid(), %reason, blamed, "own release refused by bitcoind's relay policy: the next one goes without what it blames");
                self.back_off_proposals();
                return Ok(());
            }
            Err(e) => {
                debug!(target: "release", error = %e, "testmempoolaccept unavailable: not proposing yet");
                self.back_off_proposals();
                return Ok(());
            }
        }
        // bitcoind took its time: the turn may have passed on meanwhile.
        if !self.may_propose_now() {
            debug!(target: "release", txid = %p.txid(), "the turn passed on while bitcoind checked the release: not sent");
            return Ok(());
        }
        info!(target: "release", txid = %p.txid(), payouts = p.payouts.len(), inputs = p.tx.input.len(), rate = self.honest_rate(), "proposing a release");
        self.propose(p)
    }
}
