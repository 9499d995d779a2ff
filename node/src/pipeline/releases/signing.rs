//! Signing a release's inputs, broadcasting it, following it to depth, and replacing
//! it by fee.

use super::*;

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
            // The async tick broadcasts it (bitcoind does not know it yet).
            rec.status = ReleaseStatus::Broadcast;
            info!(target: "release", %txid, "every input signed: broadcasting");
        }
        self.save_release(&txid)?;
        self.last_release_check = Instant::now().checked_sub(Duration::from_secs(10)).unwrap_or_else(Instant::now);
        Ok(())
    }

    pub(in crate::pipeline) async fn follow_releases(&mut self) -> eyre::Result<()> {
        if self.bitcoin.is_none() {
            return Ok(());
        }
        let watched = self.releases_in(&[ReleaseStatus::Broadcast, ReleaseStatus::Replaced]);
        let mut changed = Vec::new();
        let mut stuck_releases = Vec::new();
        // This runs in the node's main loop: a slow bitcoind must not hold up consensus.
        let budget = Instant::now() + FOLLOW_BUDGET;
        for txid in watched {
            if Instant::now() > budget {
                debug!(target: "release", "following releases: time budget spent, the rest next tick");
                break;
            }
            let Some(btc) = self.bitcoin.as_ref() else { break };
            let confs = match bounded(btc.tx_confirmations(txid)).await {
                Ok(c) => c,
                Err(e) => {
                    warn!(target: "release", %txid, error = %e, "cannot follow the release");
                    continue;
                }
            };
            let Some((rec, _)) = self.releases.get(&txid) else { continue };
            let status = rec.status;
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
                    let refused_long = self.releases.get(&txid).is_some_and(|(r, _)| {
                        r.broadcast_ms.is_none() && now_ms().saturating_sub(r.created_ms) > self.bump_turn(&txid)
                    });
                    // Asked first. A signed release that bitcoind's policy now refuses
                    // (its policy changed since the release was checked before signing)
                    // stays live: its signatures exist, another node's mempool or a miner
                    // may still confirm it, so its payouts stay promised to it (freeing
                    // them could pay them twice). It is named once, with what it blames.
                    if let Some(t) = &tx
                        && let Ok(Some(reason)) = self.policy_refusal(t.clone()).await
                    {
                        if self.policy_refused.insert(txid) {
                            let blamed = self.blamed_payouts(&txid).await;
                            error!(target: "release", %txid, %reason, blamed = ?blamed, "signed release refused by bitcoind's relay policy: not broadcast from here; its payouts stay promised to it");
                            self.metrics.releases.with_label_values(&["refused_by_policy"]).inc();
                        }
                        continue;
                    }
                    let btc = match self.bitcoin.as_ref() {
                        Some(b) => b,
                        None => continue,
                    };
                    if let Some(tx) = tx {
                        match bounded(btc.broadcast(tx)).await {
                            Ok(_) => {
                                let Some((rec, _)) = self.releases.get_mut(&txid) else { continue };
                                if rec.broadcast_ms.is_none() {
                                    rec.broadcast_ms = Some(now_ms());
                                    self.metrics.releases.with_label_values(&["broadcast"]).inc();
                                    info!(target: "release", %txid, "release broadcast");
                                }
                                changed.push(txid);
                            }
                            Err(e) => {
                                warn!(target: "release", %txid, error = %e, "broadcast refused");
                                // A replacement the mempool refuses (fee too low to replace):
                                // bump it in turn, like a stuck one.
                                if refused_long {
                                    stuck_releases.push(txid);
                                }
                            }
                        }
                    }
                }
                None if status == ReleaseStatus::Replaced && !self.replacement_broadcast(&txid) => {
                    // Fully signed, evicted, and no replacement of it out there yet: it
                    // is still the best way to pay its peg-outs.
                    if let Ok(Some(tx)) = self.signed_tx(&txid)
                        && let Some(btc) = self.bitcoin.as_ref()
                        && let Err(e) = bounded(btc.broadcast(tx)).await
                    {
                        debug!(target: "release", %txid, error = %e, "replaced release not re-broadcast");
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
                self.replace(t).await?;
            }
        }
        self.update_pending_gauge();
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

    pub(in crate::pipeline) async fn replace(&mut self, txid: Txid) -> eyre::Result<()> {
        let Some((rec, p)) = self.releases.get(&txid) else { return Ok(()) };
        if self.bitcoin.is_none() {
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
