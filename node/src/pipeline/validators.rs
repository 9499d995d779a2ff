//! The pipeline's use of the validator set's order ([`crate::validators`]): whose turn
//! it is to propose a release or a batch, and when a proposal counts as in turn.

use super::*;

impl Pipeline {
    /// How far validator `who` stands after the first proposer of the batches of mints
    /// to `chain`: the others follow it `takeover` apart, each proposing only mints
    /// certified here for at least its rank × takeover.
    pub(super) fn batch_rank_of(&self, chain: u64, who: usize) -> usize {
        crate::validators::batch_rank(chain, who, self.n)
    }

    /// The validator that proposes the batches of mints to `chain` first.
    pub(super) fn batch_proposer(&self, chain: u64) -> usize {
        crate::validators::batch_proposer(chain, self.n)
    }

    /// Of two deliveries of one proposal (sender, arrival), the one its turn is judged
    /// by: the first while it is recent (two turns) and was in turn, or when the latest
    /// was not in turn either; else the latest. A proposal forwarded first by a
    /// validator that did not make it is then still heard from its proposer in turn,
    /// and an old arrival's turn does not pass a proposal resent long after.
    pub(super) fn delivery(&self, first: (usize, Instant), latest: (usize, Instant)) -> (usize, Instant) {
        let recent = first.1.elapsed() < self.takeover * 2;
        if recent && (self.in_turn(first.0, first.1).is_ok() || self.in_turn(latest.0, latest.1).is_err()) {
            first
        } else {
            latest
        }
    }

    /// Whether validator `from` may propose `p`, received at `at`. A fresh release (one
    /// that touches no live release here) comes from the validator whose turn it is
    /// ([`Pipeline::turn_at`]). Replacements and merges are gated in
    /// [`Pipeline::validate`] instead (their predecessors' time to be signed or
    /// confirmed, a higher fee for the same inputs).
    pub(super) fn check_turn(&self, from: usize, p: &Proposal, at: Instant) -> Result<(), ReleaseError> {
        let mine = release::Live::of(p);
        let touches_live = self
            .locks()
            .live
            .values()
            .any(|l| !l.inputs.is_disjoint(&mine.inputs) || !l.payouts.is_disjoint(&mine.payouts));
        if touches_live {
            return Ok(());
        }
        self.in_turn(from, at)
    }

    /// The turn order of release proposers ([`crate::validators::turns`]).
    pub fn turns(&self) -> release::Turns {
        crate::validators::turns(self.n, self.me, self.takeover)
    }

    /// The validator whose turn it is to propose fresh releases at wall-clock `at_ms`.
    pub fn turn_at(&self, at_ms: u64) -> usize {
        self.turns().turn_at(at_ms)
    }

    /// The slack around a turn's ends.
    pub(super) fn turn_slack_ms(&self) -> u64 {
        self.turns().slack_ms()
    }

    /// Whether this node may send a fresh proposal now (its proposing window is open).
    pub(super) fn may_propose_now(&self) -> bool {
        self.turns().may_propose(now_ms())
    }

    /// How long from wall-clock `now_ms` until this node's proposing window opens.
    pub(super) fn proposing_window_in_ms(&self, now_ms: u64) -> u64 {
        self.turns().window_in_ms(now_ms)
    }

    /// Whether `from` held the turn when its proposal arrived here at `at` (within the
    /// slack at either end of the turn).
    pub(super) fn in_turn(&self, from: usize, at: Instant) -> Result<(), ReleaseError> {
        let at_ms = now_ms().saturating_sub(at.elapsed().as_millis() as u64);
        self.turns().in_turn(from, at_ms)
    }

    /// How long `txid` may stay unconfirmed before this node bumps it: `rbf_after`, plus
    /// `takeover` per rank after the validator first in turn for its first payout.
    pub(super) fn bump_turn(&self, txid: &Txid) -> u64 {
        let rank =
            self.releases.get(txid).and_then(|(r, _)| r.payouts.first()).map_or(0, |e| relay::rank(e, self.me, self.n))
                as u64;
        (self.rbf_after.as_millis() as u64).saturating_add(rank.saturating_mul(self.takeover.as_millis() as u64))
    }
}
