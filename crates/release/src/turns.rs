//! The turn order of release proposers: the turn passes every `takeover_ms` to the next
//! validator, round robin. One proposer at a time builds every release of a burst from
//! inputs and peg-outs it knows to be free (proposers ranked per peg-out raced each
//! other for the same largest vault UTXOs); a silent validator costs one `takeover` a
//! round. A quarter of `takeover_ms` at either end of a turn is slack, for the
//! validators' clocks and the network's delay.

use crate::{ReleaseError, book::Millis};

/// Validator `me`'s view of the turn order of a set of `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turns {
    pub n: usize,
    pub me: usize,
    pub takeover_ms: Millis,
}

impl Turns {
    /// The validator whose turn it is at `at_ms`.
    pub fn turn_at(&self, at_ms: Millis) -> usize {
        let slot = at_ms / self.takeover_ms.max(1);
        usize::try_from(slot % self.n.max(1) as u64).unwrap_or(0)
    }

    /// The slack at either end of a turn.
    pub fn slack_ms(&self) -> Millis {
        self.takeover_ms / 4
    }

    /// How long from `now_ms` until this validator's proposing window opens (its turn,
    /// a slack away from either end, so that its proposals reach the others within its
    /// turn as their clocks see it): 0 while it is open. A lone validator's window never
    /// closes.
    pub fn window_in_ms(&self, now_ms: Millis) -> Millis {
        let n = self.n.max(1);
        if n == 1 {
            return 0;
        }
        let (turn_ms, slack) = (self.takeover_ms.max(1), self.slack_ms());
        let into_turn = now_ms % turn_ms;
        match (self.me + n - self.turn_at(now_ms)) % n {
            0 if into_turn + slack <= turn_ms => slack.saturating_sub(into_turn),
            0 => turn_ms * n as u64 - into_turn + slack,
            k => turn_ms * k as u64 - into_turn + slack,
        }
    }

    /// Whether this validator's proposing window is open at `now_ms`.
    pub fn may_propose(&self, now_ms: Millis) -> bool {
        self.window_in_ms(now_ms) == 0
    }

    /// Whether `from` held the turn at `at_ms` (within the slack at either end).
    pub fn in_turn(&self, from: usize, at_ms: Millis) -> Result<(), ReleaseError> {
        if from == self.me {
            return Ok(());
        }
        let slack = self.slack_ms();
        let turn = self.turn_at(at_ms);
        if [turn, self.turn_at(at_ms.saturating_sub(slack)), self.turn_at(at_ms.saturating_add(slack))].contains(&from)
        {
            return Ok(());
        }
        Err(ReleaseError::NotInTurn { proposer: from, in_turn: turn })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each validator's window is open exactly inside its own turn, a slack from either
    /// end; the window countdown reaches 0 when it opens; a proposal is in turn from
    /// the turn holder, or from a neighbour within the slack of the boundary.
    #[test]
    fn each_window_opens_inside_its_own_turn_and_the_countdown_meets_it() {
        let t = |me| Turns { n: 4, me, takeover_ms: 4_000 };
        for now in (0..40_000).step_by(250) {
            let open: Vec<usize> = (0..4).filter(|&v| t(v).may_propose(now)).collect();
            let into = now % 4_000;
            if (1_000..=3_000).contains(&into) {
                assert_eq!(open, vec![t(0).turn_at(now)], "at {now}");
            } else {
                assert!(open.is_empty(), "at {now}: {open:?}");
            }
            for v in 0..4 {
                let wait = t(v).window_in_ms(now);
                assert!(t(v).may_propose(now + wait), "v{v} at {now}: window in {wait}");
                if wait > 0 {
                    assert!(!t(v).may_propose(now + wait - 1), "v{v} at {now}: opens before {wait}");
                }
            }
        }
        assert!(t(0).in_turn(1, 4_500).is_ok());
        assert!(t(0).in_turn(1, 3_500).is_ok(), "within the slack before its turn");
        assert!(matches!(t(0).in_turn(2, 4_500), Err(ReleaseError::NotInTurn { proposer: 2, in_turn: 1 })));
        assert!(Turns { n: 1, me: 0, takeover_ms: 4_000 }.may_propose(123));
    }
}
