//! Whose turn it is to propose a release or a batch of mints, as the release and mint
//! books judge it (one source of each order).

use super::*;

impl Pipeline {
    /// How far validator `who` stands after the first proposer of the batches of mints
    /// to `chain`: the others follow it `takeover` apart, each proposing only mints
    /// certified here for at least its rank × takeover.
    pub(super) fn batch_rank_of(&self, chain: u64, who: usize) -> usize {
        self.mints.book.rank_of(chain, who)
    }

    /// The validator that proposes the batches of mints to `chain` first (the mint
    /// book's order, as the release turns are the release book's).
    pub(super) fn batch_proposer(&self, chain: u64) -> usize {
        self.mints.book.first_proposer(chain)
    }

    /// The turn order of release proposers: the release book's own, so that what the
    /// API and the test faults say of the turn is what the book judges by.
    pub fn turns(&self) -> release::Turns {
        self.book.turns()
    }

    /// The validator whose turn it is to propose fresh releases at wall-clock `at_ms`.
    pub fn turn_at(&self, at_ms: u64) -> usize {
        self.turns().turn_at(at_ms)
    }

    /// The slack around a turn's ends.
    pub(super) fn turn_slack_ms(&self) -> u64 {
        self.turns().slack_ms()
    }

    /// How long from wall-clock `now_ms` until this node's proposing window opens.
    pub(super) fn proposing_window_in_ms(&self, now_ms: u64) -> u64 {
        self.turns().window_in_ms(now_ms)
    }
}
