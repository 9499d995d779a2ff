//! Signing a release's inputs, broadcasting it, following it to depth, and replacing
//! it by fee.

use super::{
    driver::{Ask, Broadcast},
    *,
};

impl Pipeline {
    pub(in crate::pipeline) fn start_release_sessions(&mut self, txid: Txid) -> eyre::Result<()> {
        if self.pays_reorged(&txid) {
            return Ok(());
        }
        let Some((rec, p)) = self.releases.get(&txid) else { return Ok(()) };
        let hashes = release::sighashes(&p.tx, &p.prevouts)?;
        let todo: Vec<(usize, [u8; 32])> = hashes
            .into_iter()
            .enumerate()
            .filter(|(i, _)| rec.signatures.get(*i).is_some_and(Option::is_none))
            .collect();
        for (i, h) in todo {
            self.start(KeyKind::Btc, h.to_vec(), Purpose::ReleaseInput { txid: txid.to_string(), input: i as u32 })?;
        }
        Ok(())
    }

    pub(in crate::pipeline) fn signed_tx(&self, txid: &Txid) -> eyre::Result<Option<bitcoin::Transaction>> {
        let Some((rec, p)) = self.releases.get(txid) else { return Ok(None) };
        let Some(suite) = self.btc.as_ref() else { return Ok(None) };
        let key = suite.public_key_package().verifying_key();
        let hashes = release::sighashes(&p.tx, &p.prevouts)?;
        let mut sigs = Vec::new();
        for (i, s) in rec.signatures.iter().enumerate() {
            let Some(s) = s else { return Ok(None) };
            let sig = btcfi_signer::frost_secp256k1_tr::Signature::deserialize(&hex::decode(s)?)
                .map_err(|e| eyre::eyre!("stored release signature: {e}"))?;
            let hash = hashes.get(i).ok_or_else(|| eyre::eyre!("release {txid}: more signatures than inputs"))?;
            btcsig::verify_key_path(hash, key, &sig)?;
            sigs.push(btcsig::schnorr_signature(&sig)?);
        }
        Ok(Some(release::finalize(&p.tx, &sigs)))
    }

    pub(in crate::pipeline) fn try_complete(&mut self, txid: Txid) -> eyre::Result<()> {
        match self.signed_tx(&txid) {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(()),
            Err(e) => {
                // A signature that does not verify (never expected: each session
                // verified it): sign again rather than stop the node.
                error!(target: "release", %txid, error = %e, "release signatures do not verify: signing its inputs again");
                if let Some((rec, _)) = self.releases.get_mut(&txid) {
                    forget_signatures(rec);
                }
                self.save_release(&txid)?;
                return Ok(());
            }
        }
        if let Some((rec, _)) = self.releases.get_mut(&txid)
            && rec.status == ReleaseStatus::Signing
        {
            // Following it broadcasts it (bitcoind does not know it yet).
            rec.status = ReleaseStatus::Broadcast;
            info!(target: "release", %txid, "every input signed: broadcasting");
        }
        self.save_release(&txid)?;
        self.last_release_check = Instant::now().checked_sub(Duration::from_secs(10)).unwrap_or_else(Instant::now);
        Ok(())
    }

    /// Asks bitcoind for the confirmations of the releases broadcast or replaced (one
    /// ask at a time); [`Pipeline::on_confirmations`] takes the answer.
    pub(in crate::pipeline) fn follow_releases(&mut self) {
        let watched = self.releases_in(&[ReleaseStatus::Broadcast, ReleaseStatus::Replaced]);
        if !watched.is_empty() {
            self.asked.follow = self.ask(Ask::Confirmations(watched));
        }
    }

    /// bitcoind's confirmations of the releases followed: the ones at depth are
    /// confirmed (and what conflicts with them dead), stuck ones replaced by fee, and
    /// ones bitcoind does not know (first time, or evicted) broadcast.
    pub(in crate::pipeline) fn on_confirmations(
        &mut self,
        confs: Vec<(Txid, Result<Option<u64>, String>)>,
    ) -> eyre::Result<()> {
        self.asked.follow = false;
        let mut changed = Vec::new();
        let mut stuck_releases = Vec::new();
        for (txid, confs) in confs {
            let confs = match confs {
                Ok(c) => c,
                Err(e) => {
                    warn!(target: "release", %txid, error = %e, "cannot follow the release");
                    continue;
                }
            };
            // Gone, or finished meanwhile: nothing to follow.
            let Some((rec, _)) = self.releases.get(&txid) else { continue };
            let status = rec.status;
            if !matches!(status, ReleaseStatus::Broadcast | ReleaseStatus::Replaced) {
                continue;
            }
            match confs {
                Some(c) if c >= self.confirmations => {
                    let Some((rec, p)) = self.releases.get_mut(&txid) else { continue };
                    rec.status = ReleaseStatus::Confirmed;
                    rec.confirmations = c;
                    self.metrics.releases.with_label_values(&["confirmed"]).inc();
                    self.metrics.vault_fees_paid.inc_by(p.fee());
                    info!(target: "release", %txid, confirmations = c, payouts = rec.payouts.len(), "release confirmed at depth: peg-outs paid");
                    changed.push(txid);
                }
                Some(c) => {
                    let turn = self.bump_turn(&txid);
                    let Some((rec, _)) = self.releases.get_mut(&txid) else { continue };
                    rec.confirmations = c;
                    if c == 0
                        && status == ReleaseStatus::Broadcast
                        && rec.broadcast_ms.is_some_and(|b| now_ms().saturating_sub(b) > turn)
                    {
                        stuck_releases.push(txid);
                    }
                }
                // Pays a reorged peg-out: never broadcast from here (its withdrawal is).
                None if self.pays_reorged(&txid) => {}
                None if self.asked.broadcasts.contains(&txid) => {}
                None if status == ReleaseStatus::Broadcast => {
                    // Not known to bitcoind (first time, or evicted): (re)broadcast.
                    let tx = match self.signed_tx(&txid) {
                        Ok(tx) => tx,
                        Err(e) => {
                            error!(target: "release", %txid, error = %e, "stored release signatures do not verify: signing its inputs again");
                            if let Some((rec, _)) = self.releases.get_mut(&txid) {
                                forget_signatures(rec);
                            }
                            changed.push(txid);
                            None
                        }
                    };
                    // Asked of the policy first. A signed release that bitcoind's policy
                    // now refuses (its policy changed since the release was checked
                    // before signing) stays live: its signatures exist, another node's
                    // mempool or a miner may still confirm it, so its payouts stay
                    // promised to it (freeing them could pay them twice).
                    if let Some(tx) = tx {
                        let probes = self.releases.get(&txid).map(|(_, p)| self.probes(p));
                        if self.ask(Ask::Broadcast { txid, tx, probes }) {
                            self.asked.broadcasts.insert(txid);
                        }
                    }
                }
                None if status == ReleaseStatus::Replaced && !self.replacement_broadcast(&txid) => {
                    // Fully signed, evicted, and no replacement of it out there yet: it
                    // is still the best way to pay its peg-outs.
                    if let Ok(Some(tx)) = self.signed_tx(&txid)
                        && self.ask(Ask::Broadcast { txid, tx, probes: None })
                    {
                        self.asked.broadcasts.insert(txid);
                    }
                }
                None => {}
            }
        }
        // What conflicts with a confirmed release can never confirm: stop following it.
        for confirmed in changed.clone() {
            if self.releases.get(&confirmed).is_some_and(|(r, _)| r.status == ReleaseStatus::Confirmed) {
                let spent: BTreeSet<OutPoint> = self
                    .releases
                    .get(&confirmed)
                    .map(|(_, p)| p.tx.input.iter().map(|i| i.previous_output).collect())
                    .unwrap_or_default();
                let dead = self.mark_conflicts(&spent, &confirmed);
                for t in &dead {
                    self.abandon_sessions(t);
                }
                changed.extend(dead);
            }
        }
        for t in changed {
            self.save_release(&t)?;
        }
        self.retire_finished();
        for t in stuck_releases {
            // One paying a reorged peg-out is withdrawn, not bumped.
            if !self.pays_reorged(&t) {
                self.replace(t)?;
            }
        }
        self.update_pending_gauge();
        Ok(())
    }

    /// What came of broadcasting release `txid`.
    pub(in crate::pipeline) fn on_broadcast(&mut self, txid: Txid, sent: Broadcast) -> eyre::Result<()> {
        self.asked.broadcasts.remove(&txid);
        let Some((rec, _)) = self.releases.get(&txid) else { return Ok(()) };
        let status = rec.status;
        match sent {
            Broadcast::Done => {
                let Some((rec, _)) = self.releases.get_mut(&txid) else { return Ok(()) };
                if rec.broadcast_ms.is_none() {
                    rec.broadcast_ms = Some(now_ms());
                    self.metrics.releases.with_label_values(&["broadcast"]).inc();
                    info!(target: "release", %txid, "release broadcast");
                }
                self.save_release(&txid)?;
            }
            Broadcast::Refused { reason, blamed } => {
                // Named once, with what it blames; its payouts stay promised to it.
                if self.policy_refused.insert(txid) {
                    let blamed: Vec<EventId> = blamed.into_iter().map(|(e, _)| e).collect();
                    error!(target: "release", %txid, %reason, blamed = ?blamed, "signed release refused by bitcoind's relay policy: not broadcast from here; its payouts stay promised to it");
                    self.metrics.releases.with_label_values(&["refused_by_policy"]).inc();
                }
            }
            Broadcast::Failed(e) if status == ReleaseStatus::Broadcast => {
                warn!(target: "release", %txid, error = %e, "broadcast refused");
                // A replacement the mempool refuses (fee too low to replace): bump it
                // in turn, like a stuck one.
                let refused_long = self.releases.get(&txid).is_some_and(|(r, _)| {
                    r.broadcast_ms.is_none() && now_ms().saturating_sub(r.created_ms) > self.bump_turn(&txid)
                });
                if refused_long && !self.pays_reorged(&txid) {
                    self.replace(txid)?;
                    self.update_pending_gauge();
                }
            }
            Broadcast::Failed(e) => debug!(target: "release", %txid, error = %e, "replaced release not re-broadcast"),
        }
        Ok(())
    }

    /// Whether a live release sharing an input with `txid` has been broadcast.
    pub(in crate::pipeline) fn replacement_broadcast(&self, txid: &Txid) -> bool {
        let Some((_, p)) = self.releases.get(txid) else { return false };
        let inputs = release::Live::of(p).inputs;
        self.releases.iter().any(|(t, (r, q))| {
            t != txid
                && r.status == ReleaseStatus::Broadcast
                && q.tx.input.iter().any(|i| inputs.contains(&i.previous_output))
        })
    }

    /// Leaves the signing sessions of a release's inputs that are still running.
    pub(in crate::pipeline) fn abandon_sessions(&mut self, txid: &Txid) {
        let Some((_, p)) = self.releases.get(txid) else { return };
        let Ok(hashes) = release::sighashes(&p.tx, &p.prevouts) else { return };
        if let Some(suite) = self.btc.as_mut() {
            for h in hashes {
                suite.abandon(&h);
            }
        }
    }

    /// Marks every release other than the confirmed `txid` that spends one of `spent`
    /// (its inputs) as conflicted; returns them.
    pub(in crate::pipeline) fn mark_conflicts(&mut self, spent: &BTreeSet<OutPoint>, txid: &Txid) -> Vec<Txid> {
        let mut dead = Vec::new();
        for (other, (rec, p)) in self.releases.iter_mut() {
            if other != txid
                && rec.status != ReleaseStatus::Confirmed
                && rec.status != ReleaseStatus::Conflicted
                && p.tx.input.iter().any(|i| spent.contains(&i.previous_output))
            {
                rec.status = ReleaseStatus::Conflicted;
                info!(target: "release", txid = %other, confirmed = %txid, "release superseded by a conflicting confirmed one");
                dead.push(*other);
            }
        }
        dead
    }

    pub(in crate::pipeline) fn replace(&mut self, txid: Txid) -> eyre::Result<()> {
        let Some((rec, p)) = self.releases.get(&txid) else { return Ok(()) };
        if self.bitcoind.is_none() {
            return Ok(());
        }
        // Twice the old rate, or the estimate, within the band the signers accept.
        let centre = self.fee_estimate.map_or(rec.fee_rate_sat_per_vb, |e| e.max(rec.fee_rate_sat_per_vb));
        let band = self.policy.band_ceiling(Some(centre));
        let rate = (rec.fee_rate_sat_per_vb.saturating_mul(2)).max(self.honest_rate()).min(band);
        let Some(new) = release::bump(p, rate, &self.policy) else {
            warn!(target: "release", %txid, "stuck release cannot be bumped further (no change left or at the fee ceiling)");
            return Ok(());
        };
        info!(target: "release", old = %txid, new = %new.txid(), rate, "release stuck: proposing a replacement (RBF)");
        self.metrics.releases.with_label_values(&["replaced"]).inc();
        self.propose(new)
    }
}
