//! What the chain adapters and the bitcoind driver report to the release path: the
//! vault's spends at depth (the only source of "paid"), how far the Bitcoin view has
//! caught up, events reorged out past finality, fee estimates and the answers to the
//! checks and broadcasts the book asked for ([`driver`](super::driver) makes the
//! calls).

use super::{
    driver::{Answer, Ask},
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
            Answer::Checked(p, verdict) => self.book_checked(&p, verdict),
            Answer::Broadcast(txid, sent) => self.book_broadcast(txid, sent),
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

    /// Certified peg-outs not paid at depth: per payment class, the certified ones less
    /// the vault's final payments of that class on chain.
    pub(in crate::pipeline) fn update_pending_gauge(&self) {
        let certified: BTreeMap<EventId, Payout> =
            self.book.book.certified().map(|(p, _)| (p.event, p.clone())).collect();
        let unpaid = release::payment_budget(&certified, &self.paid, &BTreeSet::new(), &self.policy);
        self.metrics.releases_pending.set(unpaid.values().sum::<usize>() as i64);
    }

    /// Counts (or, with `undo`, uncounts) the payments of a vault spend by class.
    pub(in crate::pipeline) fn count_payments(
        paid: &mut BTreeMap<release::PaymentClass, usize>,
        outputs: &[SpendOutput],
        undo: bool,
    ) {
        for o in outputs {
            let n = paid.entry((ScriptBuf::from(o.script_pubkey.clone()), o.amount.0)).or_default();
            *n = if undo { n.saturating_sub(1) } else { n.saturating_add(1) };
        }
    }

    /// A vault spend at depth, from the Bitcoin adapter (already stored): told to the
    /// book, which settles the release it is (if it holds one) and every live release
    /// sharing one of its inputs.
    pub fn on_vault_spend(&mut self, spend: VaultSpend) -> eyre::Result<()> {
        let txid = Txid::from_byte_array(internal_order(&spend.txid));
        if !self.book_holds(&txid) && !self.onchain.contains_key(&spend.txid) {
            warn!(target: "release", txid = %spend.txid, payouts = spend.payouts.len(), "a vault spend this node has no release for (restored database, or a release it never validated): its payments count against the peg-outs they match");
        }
        self.book_spend(&spend)?;
        Self::count_payments(&mut self.paid, &spend.payouts, false);
        if let Some(before) = self.onchain.insert(spend.txid, spend.payouts) {
            Self::count_payments(&mut self.paid, &before, true);
        }
        self.update_pending_gauge();
        Ok(())
    }

    /// A vault spend left the best chain below its depth (already removed from the store).
    pub fn on_vault_spend_reorged(&mut self, txid: &TxHash) -> eyre::Result<()> {
        if let Some(outputs) = self.onchain.remove(txid) {
            Self::count_payments(&mut self.paid, &outputs, true);
        }
        self.update_pending_gauge();
        self.book_input(Input::SpendReorged { txid: Txid::from_byte_array(internal_order(txid)) })
    }

    /// Where the Bitcoin adapter stands: releases are judged only once it has seen
    /// every final block (a node catching up would not know what the vault paid yet).
    pub fn set_bitcoin_progress(&mut self, cursor: u64, finalized: u64) -> eyre::Result<()> {
        let synced = cursor >= finalized;
        if synced != self.bitcoin_synced {
            info!(target: "release", cursor, finalized, synced, "Bitcoin view {}", if synced { "caught up: releases may be signed" } else { "catching up: no release is signed meanwhile" });
        }
        self.bitcoin_synced = synced;
        if !synced {
            self.book_synced()?;
        }
        Ok(())
    }

    /// An event reported final earlier left the canonical chain (a reorg deeper than
    /// finality; already stored as reorged): from now on it is never signed, relayed or
    /// paid. A mint being signed is abandoned; the book leaves a peg-out out of every
    /// release from now on, and withdraws it from a live release that pays it.
    pub fn on_reorged(&mut self, event: EventId) -> eyre::Result<()> {
        if !self.reorged.insert(event) {
            return Ok(());
        }
        let pegout = self.book.book.certified_payout(&event).is_some();
        self.book_input(Input::Reorged(event))?;
        // A batch being signed with it is given up, its other mints batched again.
        self.mint_input(btcfi_mint::Input::Reorged(event))?;
        if pegout {
            if self.book.book.paid_events().contains(&event) {
                error!(target: "release", %event, "a peg-out reorged out past finality was paid already");
            } else {
                warn!(target: "release", %event, "peg-out reorged out past finality: left out of every release from now on");
            }
        }
        self.update_pending_gauge();
        Ok(())
    }
}
