//! Certified attestations: a mint goes to the mint book ([`super::mints`]), a payout
//! to the release book ([`super::releases`]) or is set apart with its reason; and the
//! refund a rejected deposit is due.

use super::*;

impl Pipeline {
    /// Why the bridge on `chain` may not be used now (its key is not this epoch's, or
    /// not checked yet), if it may not.
    pub(super) fn bridge_not_ready(&self, chain: u64) -> Option<String> {
        self.bridge_keys.as_ref().and_then(|k| k.not_ready(chain))
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
            AttestationKind::PegIn { dest_chain, .. } | AttestationKind::EvmToEvm { dest_chain, .. } => {
                let Some(request) = btcfi_mint::MintRequest::of(att) else { return Ok(()) };
                if !self.bridges.contains_key(&dest_chain.0) {
                    error!(target: "signing", event = %att.event, chain = dest_chain.0, "certified for a destination chain this node has no bridge for: not signed");
                    return Ok(());
                }
                // Batched by the chain's proposer (or, late, by the next ones), checked
                // by every signer against what it certified: the mint book decides.
                self.mint_input(btcfi_mint::Input::Certified(request))
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
                // The release book keeps what bitcoind's policy refused, and puts it
                // to the policy again later; the pending gauge and the API read it.
                self.book_input(release::book::Input::Certified(payout))
            }
        }
    }

    /// Keeps a certified peg-out out of every release from now on, with the reason (in
    /// the store, for the API and across restarts).
    pub(super) fn set_apart(&mut self, event: EventId, reason: String) -> eyre::Result<()> {
        if crate::records::get_unpayable(&self.store, &event)?.is_none() {
            error!(target: "release", %event, %reason, "certified peg-out can never be paid: left out of every release");
            self.metrics.releases.with_label_values(&["unpayable"]).inc();
            let mut b = Batch::new();
            crate::records::put_unpayable(&mut b, &event, &reason)?;
            self.store.commit(b)?;
        }
        Ok(())
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
}
