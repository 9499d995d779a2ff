//! What the API shows of the pipeline: the status summary, readiness, and why an
//! event stands where it does (the `explain` view).

use super::*;
use crate::api::{BatchWait, Stage, Waiting};

impl Pipeline {
    /// Why `event` waits, as this node sees it now (None: nothing pending here): a mint
    /// held by its bridge's key, queued or being signed (the session, its attempt, the
    /// signers missing, the next retry); a payout waiting for a release, or in one
    /// being signed (which inputs, and their sessions); reorged.
    pub fn explain(&self, event: &EventId) -> Option<Waiting> {
        if self.reorged.contains(event) {
            return Some(Waiting::Stage(Stage::Reorged {
                detail: "reorged out past finality: never signed, relayed or paid",
            }));
        }
        let now = now_ms();
        if let Some(at) = self.pegout_certified_at(event) {
            if let Some(w) = self.book_explain(event) {
                return Some(w);
            }
            return Some(Waiting::Stage(Stage::WaitingForRelease {
                certified_for_secs: Some(now.saturating_sub(at) / 1_000),
                proposer_in_turn: self.turn_at(now),
                this_node_proposes_in_ms: self.proposing_window_in_ms(now),
            }));
        }
        let book = &self.mints.book;
        if let Some((chain, at)) = book.waiting(event) {
            if let Some(reason) = self.bridge_not_ready(chain) {
                return Some(Waiting::Stage(Stage::Held { reason: Some(reason) }));
            }
            let rank = self.batch_rank_of(chain, self.me);
            let waited = now.saturating_sub(at);
            let patience = book.config().takeover_ms.saturating_mul(rank as u64);
            return Some(Waiting::Stage(Stage::Batching {
                chain_id: chain,
                certified_for_ms: waited,
                proposer: self.batch_proposer(chain),
                proposer_rank_of_this_node: rank,
                this_node_proposes_in_ms: (patience + book.config().batch_wait_ms).saturating_sub(waited),
            }));
        }
        if !self.usable.contains(&KeyKind::Evm) {
            return Some(Waiting::Stage(Stage::WaitingForEvmKey));
        }
        let held = book.batch_of(event)?;
        let batch = BatchWait {
            root: word(&held.proposal.root()),
            mints: held.proposal.leaves.len(),
            proposer: held.proposer,
            proposed_ms_ago: now.saturating_sub(held.since),
        };
        if held.signing_since.is_none() {
            let ready = book.holders(held.message);
            return Some(Waiting::Stage(Stage::AwaitingSigners { batch, ready, needed: self.n * 2 / 3 }));
        }
        let session = self.evm.as_ref()?.explain(held.message)?;
        Some(Waiting::Session { session, batch: Some(batch) })
    }

    /// Group keys, vault and releases, for `/v1/status`.
    pub fn summary(&self) -> crate::api::SigningSummary {
        let keys = [KeyKind::Evm, KeyKind::Btc]
            .into_iter()
            .map(|k| {
                let load = self.load(k);
                let v = crate::api::KeyView {
                    group_key: self.group_keys.get(&k).cloned(),
                    usable: self.usable.contains(&k),
                    sessions_in_flight: load.map(|l| l.in_flight),
                    max_sessions_in_flight: load.map(|l| l.max_in_flight),
                    queued: load.map(|l| l.queued),
                    queued_for_secs: load.map(|l| l.backlog.as_secs()),
                };
                (k.as_str().to_owned(), v)
            })
            .collect();
        let mut releases = BTreeMap::<String, usize>::new();
        let (statuses, paid) = self.book_summary();
        for s in statuses {
            let status = match s {
                ReleaseStatus::Signing => "signing",
                ReleaseStatus::Broadcast => "broadcast",
                ReleaseStatus::Replaced => "replaced",
                ReleaseStatus::Confirmed => "confirmed",
                ReleaseStatus::Conflicted => "conflicted",
                ReleaseStatus::Expired => "expired",
            };
            *releases.entry(status.to_owned()).or_default() += 1;
        }
        crate::api::SigningSummary {
            keys,
            vault_address: self.vault_address.clone(),
            peg_outs_pending: self.metrics.releases_pending.get(),
            releases_in_flight: releases,
            peg_outs_paid: paid,
            relayer: self.relay.is_some(),
        }
    }

    /// Which keys are missing or not yet verified, and which bridges hold another key
    /// (for `/ready`).
    pub fn not_ready(&self) -> Vec<String> {
        let mut why = self.bridge_keys.as_ref().map(BridgeKeys::issues).unwrap_or_default();
        for kind in [KeyKind::Evm, KeyKind::Btc] {
            if !self.group_keys.contains_key(&kind) {
                why.push(format!("no {kind} key for epoch {}: run `btcfi-node dkg`", self.epoch));
            } else if !self.usable.contains(&kind) {
                why.push(format!("{kind} key not verified yet (test signature pending)"));
            }
            if let Some(l) = self.load(kind)
                && l.queued > 0
                && l.backlog >= self.queue_saturated
            {
                why.push(format!(
                    "{kind} signing saturated: {} waiting behind {} sessions in flight for {} s",
                    l.queued,
                    l.in_flight,
                    l.backlog.as_secs()
                ));
            }
        }
        why
    }
}
