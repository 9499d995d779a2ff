//! Mint batches: one FROST signature over a Merkle root of many mints, proposed by the
//! chain's batch proposer, signed once t validators hold the same batch.

use super::*;

/// A batch not signed this long after it was proposed is given up and re-batched.
pub(in crate::pipeline) const BATCH_STALE_AFTER: Duration = Duration::from_secs(120);

/// A batch proposal refused only because a mint of it is not certified here yet is
/// tried again for this long; at most this many wait.
pub(in crate::pipeline) const EARLY_BATCH_FOR: Duration = Duration::from_secs(60);
pub(in crate::pipeline) const MAX_EARLY_BATCHES: usize = 256;
pub(in crate::pipeline) const NOT_CERTIFIED_YET: &str = "not certified here yet";
pub(in crate::pipeline) const ALL_SIGNED: &str = "every mint of it is signed here already";

/// A batch being signed here.
#[derive(Debug, Clone)]
pub(in crate::pipeline) struct ActiveBatch {
    pub(in crate::pipeline) proposal: BatchProposal,
    /// Who proposed it, and how far that validator stands after the batch's primary
    /// proposer (0: the primary): a better-ranked proposal of the same mints wins.
    pub(in crate::pipeline) proposer: usize,
    pub(in crate::pipeline) rank: usize,
    pub(in crate::pipeline) since: Instant,
    /// When its signing session started here: only once `t` validators (this one
    /// included) said they hold the batch, so that they start it together and their
    /// attempts do not drift apart while the others are still certifying its mints.
    /// Its staleness counts from then (under a burst, validators may hold a batch a
    /// minute before t of them certified all of its mints).
    pub(in crate::pipeline) started_at: Option<Instant>,
}

/// An unsigned batch's proposal (by its proposer) and readiness (by every holder) are
/// sent again this often.
pub(in crate::pipeline) const BATCH_RESEND_EVERY: Duration = Duration::from_secs(5);
/// Most batches one readiness note names.
pub(in crate::pipeline) const MAX_READY_PER_NOTE: usize = 1024;
/// Most batch messages whose readiness notes are kept before this node holds them.
pub(in crate::pipeline) const MAX_READY_NOTES: usize = 4096;

impl Pipeline {
    /// Proposes the batches that are due: for each chain, the mints certified here for
    /// at least this node's rank × takeover, once `batch_max` of them wait or the
    /// oldest waited `batch_wait` beyond that. Oldest first, sorted by event id inside.
    pub(super) fn propose_batches(&mut self) -> eyre::Result<()> {
        // A batch that could not be signed in this long (its proposer gone, a split
        // between proposals) is given up here and its mints batched again.
        let stale: Vec<Vec<u8>> = self
            .batches
            .iter()
            .filter(|(_, b)| b.started_at.unwrap_or(b.since).elapsed() >= BATCH_STALE_AFTER)
            .map(|(m, _)| m.clone())
            .collect();
        for message in stale {
            warn!(target: "signing", "a batch of mints not signed in {} s: given up here, its mints batched again", BATCH_STALE_AFTER.as_secs());
            self.drop_batch(&message, true);
        }
        let chains: Vec<u64> = self.unbatched.keys().copied().collect();
        for chain in chains {
            if self.bridge_not_ready(chain).is_some() {
                continue;
            }
            let rank = self.batch_rank_of(chain, self.me);
            let patience = self.takeover * rank as u32;
            while let Some(waiting) = self.unbatched.get(&chain) {
                let mut due: Vec<(Instant, Leaf)> = waiting
                    .values()
                    .filter(|(_, at)| at.elapsed() >= patience)
                    .map(|(leaf, at)| (*at, *leaf))
                    .collect();
                let Some(oldest) = due.iter().map(|(at, _)| *at).min() else { break };
                if due.len() < self.batch_max && oldest.elapsed() < patience + self.batch_wait {
                    break;
                }
                due.sort_by_key(|(at, leaf)| (*at, leaf.event));
                due.truncate(self.batch_max);
                let proposal = BatchProposal::new(chain, due.into_iter().map(|(_, l)| l).collect());
                info!(target: "signing", chain, mints = proposal.leaves.len(), root = %hex::encode(proposal.root()), rank, "proposing a batch of mints");
                let payload = [&[TAG_BATCH][..], &proposal.encode()].concat();
                self.send_to_peers(&payload);
                self.accept_batch(proposal, self.me)?;
            }
        }
        Ok(())
    }

    /// The proposer of a batch still being signed sends it again (a peer that was
    /// away starts it then; one that has it ignores the copy).
    pub(super) fn resend_batches(&mut self) {
        if self.last_batch_resend.elapsed() < BATCH_RESEND_EVERY {
            return;
        }
        self.last_batch_resend = Instant::now();
        // One readiness note for every batch held here, per peer; a proposal only to
        // the peers that have not said they hold it.
        let held: Vec<&Vec<u8>> = self
            .batches
            .iter()
            .filter(|(_, b)| b.since.elapsed() >= BATCH_RESEND_EVERY)
            .map(|(m, _)| m)
            .take(MAX_READY_PER_NOTE)
            .collect();
        if held.is_empty() {
            return;
        }
        let ready: Vec<u8> =
            std::iter::once(TAG_BATCH_READY).chain(held.iter().flat_map(|m| m.iter().copied())).collect();
        self.send_to_peers(&ready);
        for (message, b) in &self.batches {
            if b.proposer != self.me || b.since.elapsed() < BATCH_RESEND_EVERY {
                continue;
            }
            let holders = self.batch_ready.get(message).map(|(who, _)| who.clone()).unwrap_or_default();
            let payload = [&[TAG_BATCH][..], &b.proposal.encode()].concat();
            for to in (0..self.n).filter(|i| *i != self.me && !holders.contains(i)) {
                self.send(to, payload.clone());
            }
        }
    }

    /// A peer's batch proposal: signed here only if it is valid against this node's
    /// own view (see [`Pipeline::check_batch`]).
    pub(super) fn on_batch_proposal(&mut self, from: usize, p: BatchProposal) -> eyre::Result<()> {
        let Some(bridge) = self.bridges.get(&p.chain).copied() else {
            warn!(target: "signing", from, chain = p.chain, "batch for a chain with no bridge here refused");
            return Ok(());
        };
        let message = p.message(bridge);
        if self.batches.contains_key(&message) {
            // The proposer resent it: it may have missed this node's readiness.
            self.send(from, [&[TAG_BATCH_READY][..], &message].concat());
            return Ok(());
        }
        match self.check_batch(from, &p) {
            Ok(displaced) => {
                for message in displaced {
                    self.drop_batch(&message, true);
                }
                self.accept_batch(p, from)
            }
            Err(why) if why.starts_with(NOT_CERTIFIED_YET) => {
                // This node certifies a moment after the proposer: checked again on
                // each tick for a while.
                debug!(target: "signing", from, chain = p.chain, reason = %why, "batch proposal held until its mints are certified here");
                if self.early_batches.len() < MAX_EARLY_BATCHES
                    && !self.early_batches.iter().any(|(f, q, _)| *f == from && *q == p)
                {
                    self.early_batches.push((from, p, Instant::now()));
                }
                Ok(())
            }
            Err(why) if why == ALL_SIGNED => {
                // The proposer is behind (it was away while these were signed): it gets
                // the signatures instead, and checks them itself.
                let mut records = Vec::new();
                for leaf in &p.leaves {
                    if let Some(r) =
                        self.store.get_json::<SignedRecord>(Cf::SigningAttempts, signed_key(&leaf.event))?
                    {
                        records.push((leaf.event, r));
                    }
                }
                let body = serde_json::to_vec(&records)?;
                self.send(from, [&[TAG_BATCH_SIGNED][..], &body].concat());
                Ok(())
            }
            Err(why) => {
                debug!(target: "signing", from, chain = p.chain, mints = p.leaves.len(), reason = %why, "batch proposal refused");
                Ok(())
            }
        }
    }

    /// Signatures a peer holds for mints this node still wants signed: each taken only
    /// if it verifies here, under this epoch's key, for the mint this node certified
    /// (the plain mint message, or the batch message over a root its proof leads to).
    pub(super) fn on_signed_records(&mut self, from: usize, body: &[u8]) -> eyre::Result<()> {
        let Ok(records) = serde_json::from_slice::<Vec<(EventId, SignedRecord)>>(body) else {
            warn!(target: "signing", from, "undecodable signed mints dropped");
            return Ok(());
        };
        let Some((px, py)) = self.evm_xy else { return Ok(()) };
        let mut adopted = 0;
        for (event, rec) in records.into_iter().take(crate::batch::MAX_BATCH_LEAVES) {
            if self.store.get(Cf::SigningAttempts, signed_key(&event))?.is_some() || self.reorged.contains(&event) {
                continue;
            }
            let Some(cert) = crate::state::get_certified(&self.store, &event)? else { continue };
            let Some((dest, Leaf { recipient, amount, .. })) = mint_of(&cert.attestation) else { continue };
            let Some(bridge) = self.bridges.get(&dest.0).copied() else { continue };
            let Ok(message) = hex32(&rec.message) else { continue };
            let expected = match &rec.batch {
                None => mint_message(dest.0, bridge, event.contract_id(), Address::from(recipient.0), amount.0),
                Some(b) => {
                    let (Ok(root), Ok(proof)) =
                        (hex32(&b.root), b.proof.iter().map(|p| hex32(p)).collect::<eyre::Result<Vec<_>>>())
                    else {
                        continue;
                    };
                    let leaf = btcfi_signer::evm::mint_leaf(event.contract_id(), Address::from(recipient.0), amount.0);
                    if !btcfi_signer::evm::verify_proof(leaf, &proof, root) {
                        continue;
                    }
                    btcfi_signer::evm::batch_message(dest.0, bridge, root)
                }
            };
            let (Ok(rx), Ok(ry), Ok(z)) = (hex32(&rec.rx), hex32(&rec.ry), hex32(&rec.z)) else { continue };
            let sig = EvmSignature {
                rx: alloy::primitives::U256::from_be_bytes(rx),
                ry: alloy::primitives::U256::from_be_bytes(ry),
                z: alloy::primitives::U256::from_be_bytes(z),
            };
            if message != expected || btcfi_signer::evm::verify(&expected, px, py, &sig).is_err() {
                warn!(target: "signing", from, %event, "a peer's mint signature does not verify here: dropped");
                continue;
            }
            let mut b = Batch::new();
            b.put_json(Cf::SigningAttempts, signed_key(&event), &rec)?;
            self.store.commit(b)?;
            adopted += 1;
            if let Some(m) = self.in_batch.get(&event).cloned() {
                self.drop_batch(&m, true);
            }
            for waiting in self.unbatched.values_mut() {
                waiting.remove(&event);
            }
        }
        if adopted > 0 {
            info!(target: "signing", from, mints = adopted, "mint signatures learned from a peer (signed while this node was away)");
        }
        Ok(())
    }

    /// Batch proposals that came before this node certified all their mints, tried
    /// again (kept for [`EARLY_BATCH_FOR`]).
    pub(super) fn retry_early_batches(&mut self) -> eyre::Result<()> {
        let early = std::mem::take(&mut self.early_batches);
        for (from, p, at) in early {
            if at.elapsed() < EARLY_BATCH_FOR {
                let before = self.early_batches.len();
                self.on_batch_proposal(from, p.clone())?;
                // Still early: keep its first arrival time, not a new one.
                if let Some(last) = self.early_batches.get_mut(before) {
                    last.2 = at;
                }
            }
        }
        Ok(())
    }

    /// Whether this node signs batch `p` from validator `from`; if so, the batches here
    /// it displaces (a better-ranked proposal of some of their mints). Every leaf must
    /// be a mint this node certified itself, to that chain, for that recipient and
    /// amount, and not reorged; not every leaf may be signed here already; and a mint
    /// already in a batch here moves only to a proposer ranked before that batch's.
    pub(super) fn check_batch(&self, from: usize, p: &BatchProposal) -> Result<Vec<Vec<u8>>, String> {
        if from >= self.n {
            return Err("proposer outside the validator set".into());
        }
        if p.leaves.len() > crate::batch::MAX_BATCH_LEAVES {
            return Err("too many mints".into());
        }
        if let Some(why) = self.bridge_not_ready(p.chain) {
            return Err(why);
        }
        if !self.usable.contains(&KeyKind::Evm) {
            return Err("the evm key is not verified here yet".into());
        }
        let rank = self.batch_rank_of(p.chain, from);
        let mut signed = 0;
        let mut displaced = BTreeSet::new();
        for leaf in &p.leaves {
            if self.reorged.contains(&leaf.event) {
                return Err(format!("{} was reorged out past finality", leaf.event));
            }
            let certified = crate::state::get_certified(&self.store, &leaf.event).map_err(|e| e.to_string())?;
            let Some(rec) = certified else { return Err(format!("{NOT_CERTIFIED_YET}: {}", leaf.event)) };
            if mint_of(&rec.attestation) != Some((ChainId(p.chain), *leaf)) {
                return Err(format!("{} is not that mint here", leaf.event));
            }
            if self.store.get(Cf::SigningAttempts, signed_key(&leaf.event)).map_err(|e| e.to_string())?.is_some() {
                signed += 1;
            }
            if let Some(message) = self.in_batch.get(&leaf.event) {
                match self.batches.get(message) {
                    Some(b) if b.rank <= rank => {
                        return Err(format!(
                            "{} is in a batch of a proposer ranked before or with this one",
                            leaf.event
                        ));
                    }
                    Some(_) => {
                        displaced.insert(message.clone());
                    }
                    None => {}
                }
            }
        }
        if signed == p.leaves.len() {
            return Err(ALL_SIGNED.into());
        }
        Ok(displaced.into_iter().collect())
    }

    /// Takes batch `p` (proposed by `proposer`, this node included) into signing: its
    /// mints leave the waiting set and one session signs its message.
    pub(super) fn accept_batch(&mut self, p: BatchProposal, proposer: usize) -> eyre::Result<()> {
        let Some(bridge) = self.bridges.get(&p.chain).copied() else { return Ok(()) };
        let message = p.message(bridge);
        if let Some(waiting) = self.unbatched.get_mut(&p.chain) {
            for leaf in &p.leaves {
                waiting.remove(&leaf.event);
            }
        }
        for leaf in &p.leaves {
            self.in_batch.insert(leaf.event, message.clone());
        }
        let rank = self.batch_rank_of(p.chain, proposer);
        let active = ActiveBatch { proposal: p, proposer, rank, since: Instant::now(), started_at: None };
        self.batches.insert(message.clone(), active);
        self.send_to_peers(&[&[TAG_BATCH_READY][..], &message].concat());
        self.maybe_start_batch(&message)
    }

    /// Starts signing the batch of `message` once `t` validators hold it (this one and
    /// `t − 1` peers that said so).
    pub(super) fn maybe_start_batch(&mut self, message: &[u8]) -> eyre::Result<()> {
        let t = self.n * 2 / 3 + 1;
        let peers = self.batch_ready.get(message).map_or(0, |(who, _)| who.len());
        let Some(b) = self.batches.get_mut(message) else { return Ok(()) };
        if b.started_at.is_some() || peers + 1 < t {
            return Ok(());
        }
        b.started_at = Some(Instant::now());
        let purpose = match b.proposal.leaves.as_slice() {
            [one] => Purpose::Mint { event: one.event },
            _ => Purpose::MintBatch {
                chain: b.proposal.chain,
                root: hex::encode(b.proposal.root()),
                mints: b.proposal.leaves.len(),
            },
        };
        self.start(KeyKind::Evm, message.to_vec(), purpose)
    }

    /// Validator `from` holds the batches whose messages `body` lists (32 bytes each).
    pub(super) fn on_batch_ready(&mut self, from: usize, body: &[u8]) -> eyre::Result<()> {
        if !body.len().is_multiple_of(32) || body.len() / 32 > MAX_READY_PER_NOTE {
            return Ok(());
        }
        for message in body.chunks(32) {
            self.on_batch_ready_one(from, message)?;
        }
        Ok(())
    }

    pub(super) fn on_batch_ready_one(&mut self, from: usize, message: &[u8]) -> eyre::Result<()> {
        if from >= self.n || from == self.me {
            return Ok(());
        }
        // Bounded so that notes for invented batches never displace a real one's.
        let batches = &self.batches;
        let held = |m: &[u8]| batches.contains_key(m);
        btcfi_mint::book::note_holder(&mut self.batch_ready, held, MAX_READY_NOTES, from, message, Instant::now());
        self.maybe_start_batch(message)
    }

    /// Stops signing the batch of `message` here; with `requeue`, its mints not
    /// signed yet wait for another batch again.
    pub(super) fn drop_batch(&mut self, message: &[u8], requeue: bool) {
        let Some(b) = self.batches.remove(message) else { return };
        if let Some(suite) = self.evm.as_mut() {
            suite.abandon(message);
        }
        self.deferred.retain(|(_, m, _)| m.as_slice() != message);
        for leaf in &b.proposal.leaves {
            if self.in_batch.get(&leaf.event).is_some_and(|m| m.as_slice() == message) {
                self.in_batch.remove(&leaf.event);
                let signed = self.store.get(Cf::SigningAttempts, signed_key(&leaf.event)).ok().flatten().is_some();
                if requeue && !signed && !self.reorged.contains(&leaf.event) {
                    self.unbatched.entry(b.proposal.chain).or_default().insert(leaf.event, (*leaf, b.since));
                }
            }
        }
    }

    /// The batch of `message` is signed: it is no longer being signed here.
    pub(super) fn finish_batch(&mut self, message: &[u8]) {
        self.batch_ready.remove(message);
        let Some(b) = self.batches.remove(message) else { return };
        for leaf in &b.proposal.leaves {
            if self.in_batch.get(&leaf.event).is_some_and(|m| m.as_slice() == message) {
                self.in_batch.remove(&leaf.event);
            }
        }
    }

    /// The stored record of mint `leaf` to `chain`, signed by `evm` over `message` in
    /// `attempt` with the validators `signers` eligible (not part of a batch).
    pub(super) fn signed_record(
        &self,
        chain: u64,
        leaf: &Leaf,
        message: &[u8],
        evm: &EvmSignature,
        signers: &[usize],
        attempt: u32,
    ) -> SignedRecord {
        SignedRecord {
            chain_id: chain,
            bridge: self.bridges.get(&chain).copied().unwrap_or_default().to_string(),
            contract_event_id: word(&leaf.event.contract_id()),
            recipient: format!("0x{}", hex::encode(leaf.recipient.0)),
            amount_sats: leaf.amount.0,
            message: format!("0x{}", hex::encode(message)),
            rx: word(&evm.rx.to_be_bytes()),
            ry: word(&evm.ry.to_be_bytes()),
            z: word(&evm.z.to_be_bytes()),
            signers: signers.iter().filter_map(|i| self.peers.get(*i)).map(|p| p.to_string()).collect(),
            attempt,
            signed_at_ms: now_ms(),
            batch: None,
        }
    }

    /// A batch signature: each mint's record (with its proof) stored in one write, the
    /// batch handed to the relayer.
    pub(super) fn on_batch_signed(
        &mut self,
        message: &[u8],
        signature: &[u8],
        signers: &[usize],
        attempt: u32,
    ) -> eyre::Result<()> {
        let Some(b) = self.batches.get(message).cloned() else { return Ok(()) };
        let evm = own_evm_signature(signature)?;
        let p = &b.proposal;
        let root = p.root();
        let proofs = p.proofs();
        let mut batch = Batch::new();
        let mut leaves = Vec::new();
        for (leaf, proof) in p.leaves.iter().zip(proofs) {
            if self.reorged.contains(&leaf.event) {
                continue;
            }
            let mut record = self.signed_record(p.chain, leaf, message, &evm, signers, attempt);
            record.batch =
                Some(BatchRef { root: word(&root), proof: proof.iter().map(word).collect(), leaves: p.leaves.len() });
            batch.put_json(Cf::SigningAttempts, signed_key(&leaf.event), &record)?;
            if let Some(at) = self.finalized_at.remove(&leaf.event) {
                self.metrics.finality_to_signature.observe(at.elapsed().as_secs_f64());
            }
            leaves.push(BatchLeaf { event: leaf.event, recipient: leaf.recipient, amount: leaf.amount, proof });
        }
        self.store.commit(batch)?;
        info!(target: "signing", chain = p.chain, mints = leaves.len(), root = %hex::encode(root), "batch of mints signed");
        self.finish_batch(message);
        let signature = MintSignature { rx: evm.rx.to_be_bytes(), ry: evm.ry.to_be_bytes(), z: evm.z.to_be_bytes() };
        self.queue_batch(ChainId(p.chain), BatchMintRequest { root, signature, leaves });
        Ok(())
    }
}
