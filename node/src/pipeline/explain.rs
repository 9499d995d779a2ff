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
        if let Some(a) = self.held_mints.iter().find(|a| a.event == *event) {
            return Some(Waiting::Stage(Stage::Held { reason: self.bridge_not_ready(a.destination().0) }));
        }
        if self.pegouts.contains_key(event) {
            if let Some(w) = self.book_explain(event) {
                return Some(w);
            }
            let now = now_ms();
            return Some(Waiting::Stage(Stage::WaitingForRelease {
                certified_for_secs: self.pegout_seen.get(event).map(|t| t.elapsed().as_secs()),
                proposer_in_turn: self.turn_at(now),
                this_node_proposes_in_ms: self.proposing_window_in_ms(now),
            }));
        }
        if let Some((chain, (_, at))) = self.unbatched.iter().find_map(|(c, w)| w.get(event).map(|entry| (*c, entry))) {
            let rank = self.batch_rank_of(chain, self.me);
            return Some(Waiting::Stage(Stage::Batching {
                chain_id: chain,
                certified_for_ms: at.elapsed().as_millis() as u64,
                proposer: self.batch_proposer(chain),
                proposer_rank_of_this_node: rank,
                this_node_proposes_in_ms: (self.takeover * rank as u32 + self.batch_wait)
                    .saturating_sub(at.elapsed())
                    .as_millis() as u64,
            }));
        }
        if !self.usable.contains(&KeyKind::Evm) {
            return Some(Waiting::Stage(Stage::WaitingForEvmKey));
        }
        if let Some(message) = self.in_batch.get(event)
            && let Some(b) = self.batches.get(message)
        {
            let batch = BatchWait {
                root: word(&b.proposal.root()),
                mints: b.proposal.leaves.len(),
                proposer: b.proposer,
                proposed_ms_ago: b.since.elapsed().as_millis() as u64,
            };
            if b.started_at.is_none() {
                let ready: Vec<usize> =
                    self.batch_ready.get(message).map(|(who, _)| who.iter().copied().collect()).unwrap_or_default();
                return Some(Waiting::Stage(Stage::AwaitingSigners { batch, ready, needed: self.n * 2 / 3 }));
            }
            let session = self.evm.as_ref()?.explain(message)?;
            return Some(Waiting::Session { session, batch: Some(batch) });
        }
        let rec = crate::state::get_certified(&self.store, event).ok()??;
        let message = self.mint_message_of(&rec.attestation)?;
        let session = self.evm.as_ref()?.explain(&message)?;
        Some(Waiting::Session { session, batch: None })
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
