//! Mints: a certified peg-in or EVM-to-EVM attestation becomes a mint signature (or is
//! set apart with its reason), stored and handed to the relayer.

use super::*;

impl Pipeline {
    /// Why the bridge on `chain` may not be used now (its key is not this epoch's, or
    /// not checked yet), if it may not.
    pub(super) fn bridge_not_ready(&self, chain: u64) -> Option<String> {
        self.bridge_keys.as_ref().and_then(|k| k.not_ready(chain))
    }

    /// Mints held back by a bridge's key: signed once the bridge holds this epoch's key.
    pub(super) fn retry_held_mints(&mut self) -> eyre::Result<()> {
        if self.held_mints.is_empty() {
            return Ok(());
        }
        for att in std::mem::take(&mut self.held_mints) {
            self.take_certified(&att)?;
        }
        Ok(())
    }

    /// A certified attestation: sign its mint, or queue its payout.
    pub fn on_certified(&mut self, att: &Attestation) -> eyre::Result<()> {
        self.take_certified(att)?;
        if matches!(att.kind, AttestationKind::PegOut { .. } | AttestationKind::Refund { .. }) {
            self.update_pending_gauge();
        }
        Ok(())
    }

    /// [`Pipeline::on_certified`] without the pending gauge (which walks every
    /// peg-out: [`Pipeline::resume`] updates it once, not once per record).
    pub(super) fn take_certified(&mut self, att: &Attestation) -> eyre::Result<()> {
        if self.reorged.contains(&att.event) {
            warn!(target: "signing", event = %att.event, "certified, but its block left the canonical chain past finality: never signed, relayed or paid");
            return Ok(());
        }
        match &att.kind {
            AttestationKind::PegIn { dest_chain, recipient, amount }
            | AttestationKind::EvmToEvm { dest_chain, recipient, amount, .. } => {
                if let Some(signed) =
                    self.store.get_json::<SignedRecord>(Cf::SigningAttempts, signed_key(&att.event))?
                {
                    // Signed before a restart: relay it again unless that is done.
                    let relayed =
                        self.store.get_json::<relay::RelayRecord>(Cf::SigningAttempts, relay::relay_key(&att.event))?;
                    if !relayed.is_some_and(|r| r.outcome.is_final()) {
                        let sig =
                            MintSignature { rx: hex32(&signed.rx)?, ry: hex32(&signed.ry)?, z: hex32(&signed.z)? };
                        match &signed.batch {
                            Some(b) => {
                                let proof = b.proof.iter().map(|p| hex32(p)).collect::<eyre::Result<Vec<_>>>()?;
                                let leaf =
                                    BatchLeaf { event: att.event, recipient: *recipient, amount: *amount, proof };
                                let request =
                                    BatchMintRequest { root: hex32(&b.root)?, signature: sig, leaves: vec![leaf] };
                                self.queue_batch(*dest_chain, request);
                            }
                            None => self.queue_mint(att.event, *dest_chain, *recipient, *amount, sig),
                        }
                    }
                    return Ok(());
                }
                if let Some(why) = self.bridge_not_ready(dest_chain.0) {
                    if !self.held_mints.iter().any(|a| a.event == att.event) {
                        warn!(target: "signing", event = %att.event, reason = %why, "mint held back: its bridge does not hold this epoch's key");
                        self.held_mints.push(att.clone());
                    }
                    return Ok(());
                }
                if self.mint_message_of(att).is_none() {
                    error!(target: "signing", event = %att.event, chain = dest_chain.0, "certified for a destination chain this node has no bridge for: not signed");
                    return Ok(());
                }
                if self.in_batch.contains_key(&att.event) {
                    return Ok(());
                }
                // Signed in a batch: proposed by the chain's proposer (or, late, by the
                // next ones), checked by every signer against what it certified.
                let leaf = Leaf { event: att.event, recipient: *recipient, amount: *amount };
                let waiting = self.unbatched.entry(dest_chain.0).or_default();
                waiting.entry(att.event).or_insert((leaf, Instant::now()));
                // A full batch goes at once from the chain's first proposer; everything
                // else waits for the tick (a burst would otherwise rescan the waiting
                // set once per certified mint).
                if waiting.len() >= self.batch_max
                    && self.usable.contains(&KeyKind::Evm)
                    && self.batch_rank_of(dest_chain.0, self.me) == 0
                {
                    self.propose_batches()?;
                }
                Ok(())
            }
            AttestationKind::PegOut { amount, script_pubkey, .. }
            | AttestationKind::Refund { amount, script_pubkey } => {
                let payout =
                    Payout { event: att.event, amount: *amount, script: ScriptBuf::from(script_pubkey.clone()) };
                if let Some(why) = release::unpayable(&payout, &self.policy) {
                    // Certified, but no release can ever pay it: keep it out of every
                    // batch (it would hold up the others) and say so.
                    return self.set_apart(att.event, why.to_string());
                }
                // The release book keeps its own record of what bitcoind's policy
                // refused, and puts it to the policy again later. Kept here too, for the
                // pending gauge and the API's explanations.
                self.pegouts.insert(att.event, payout.clone());
                self.pegout_seen.entry(att.event).or_insert_with(Instant::now);
                self.book_input(release::book::Input::Certified(payout))
            }
        }
    }

    /// Keeps a certified peg-out out of every release from now on, with the reason (in
    /// the store, for the API and across restarts).
    pub(super) fn set_apart(&mut self, event: EventId, reason: String) -> eyre::Result<()> {
        self.pegouts.remove(&event);
        self.pegout_seen.remove(&event);
        if self.store.get(Cf::Releases, unpayable_key(&event))?.is_none() {
            error!(target: "release", %event, %reason, "certified peg-out can never be paid: left out of every release");
            self.metrics.releases.with_label_values(&["unpayable"]).inc();
            let mut b = Batch::new();
            b.put_json(Cf::Releases, unpayable_key(&event), &crate::records::UnpayableRecord { reason })?;
            self.store.commit(b)?;
        }
        Ok(())
    }

    /// Hands a signed mint to the relayer, after this node's turn (rank × takeover).
    pub(super) fn queue_mint(
        &self,
        event: EventId,
        dest: ChainId,
        recipient: EvmAddress,
        amount: Sats,
        signature: MintSignature,
    ) {
        let Some(relay) = &self.relay else { return };
        let rank = relay::rank(&event, self.me, self.n);
        let request = MintRequest { event, recipient, amount, signature };
        let job = MintJob { dest, request, delay: self.takeover * rank as u32 };
        if relay.try_send(RelayJob::Mint(job)).is_err() {
            warn!(target: "relay", %event, "relay queue full: mint left to other validators");
        }
    }

    /// Hands a signed batch to the relayer, after this node's turn (by the root).
    pub(super) fn queue_batch(&self, dest: ChainId, request: BatchMintRequest) {
        let Some(relay) = &self.relay else { return };
        let rank = relay::batch_rank(&request.root, self.me, self.n);
        let root = hex::encode(request.root);
        let job = BatchJob { dest, request, delay: self.takeover * rank as u32 };
        if relay.try_send(RelayJob::Batch(job)).is_err() {
            warn!(target: "relay", %root, "relay queue full: batch left to other validators");
        }
    }

    /// The refund of a rejected Bitcoin deposit, if one is due: back to the script of
    /// its transaction's first input ([`Rejected::refund_to`]), the deposit less the
    /// peg-out fee, when that script is one a release can pay and the rest is above its
    /// dust limit. Decided from the chain and the config alone, so that every honest
    /// validator attests the same refund.
    pub fn refund_for(&self, r: &Rejected) -> Option<Attestation> {
        if r.id.chain != ChainId::BITCOIN {
            return None;
        }
        let (script, amount) = (r.refund_to.clone()?, r.amount?);
        let payout = Payout { event: r.id, amount, script: ScriptBuf::from(script.clone()) };
        if let Some(why) = release::unpayable(&payout, &self.policy) {
            info!(target: "release", event = %r.id, reason = %why, "rejected deposit not refunded: no release can pay it back");
            return None;
        }
        info!(target: "release", event = %r.id, amount = amount.0, "rejected deposit: refund to its first input's script attested");
        Some(Attestation { event: r.id, kind: AttestationKind::Refund { amount, script_pubkey: script } })
    }

    /// The mint message of a mint attestation (None for payouts, or an unknown bridge).
    pub(super) fn mint_message_of(&self, att: &Attestation) -> Option<Vec<u8>> {
        let (dest, leaf) = mint_of(att)?;
        let bridge = self.bridges.get(&dest.0).copied()?;
        Some(
            mint_message(dest.0, bridge, leaf.event.contract_id(), Address::from(leaf.recipient.0), leaf.amount.0)
                .to_vec(),
        )
    }
}
