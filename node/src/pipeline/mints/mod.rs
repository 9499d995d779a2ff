//! Mints: certified → batched → signed → relayed → consumed, decided by the mint book.
//!
//! [`btcfi_mint::MintBook`] decides every step (who proposes a chain's batches and
//! when the next takes over, what a signer accepts, when t validators hold a batch,
//! when one is given up, who relays first) and this module does what it says. It feeds
//! the book certified mints ([`Pipeline::take_certified`]), peers' batches, holding
//! notes and signatures, the `evm` suite's signatures, the relayer's consumed events,
//! reorgs, and the gates (the `evm` key's check, each bridge's key); and it carries
//! out the book's actions in order. Of what the book persists only the signed batches
//! are written here (`mintsig/` + message, with each mint's `sig/` record for the API,
//! in one write): its certified mints are the certified attestations, its consumed
//! ones the final relay records, its reorged ones the events stored as reorged, and
//! [`Mints::open`] rebuilds it from those.

use super::*;
use btcfi_mint::{
    Action, Change, Config, Input, MintBook, Persisted,
    wire::{self, MAX_HOLDS_PER_NOTE},
};

/// A batch not signed this long after its signing started (or, before, after it was
/// taken) is given up and its mints batched again.
const STALE_AFTER: Duration = Duration::from_secs(120);
/// A batch proposal that came before this node certified its mints (or while a gate
/// was closed) is tried again for this long; at most this many wait.
const EARLY_FOR: Duration = Duration::from_secs(60);
const MAX_EARLY: usize = 256;
/// An unsigned batch is sent again, with its holding note, this often.
const RESEND_EVERY: Duration = Duration::from_secs(5);
/// Most consumed-event reports of the relayer waiting for the run loop.
pub(crate) const CONSUMED_QUEUE: usize = 4_096;

/// The mint book of one node, and what its driver keeps beside it.
pub(in crate::pipeline) struct Mints {
    pub(in crate::pipeline) book: MintBook,
    /// What the book was last told of its gates, so that it is told only of changes.
    key_usable: Option<bool>,
    ready: BTreeMap<u64, bool>,
    /// Who signed the signature being handed to the book, and in which attempt (for
    /// the mints' records).
    signed_by: (Vec<usize>, u32),
}

impl Mints {
    /// The book of `cfg`'s node `me` of `n`, restored from `store`, and the relays it
    /// owes at once (every signed batch with a mint not consumed yet).
    pub(in crate::pipeline) fn open(
        cfg: &NodeConfig,
        store: &Store,
        me: usize,
        n: usize,
    ) -> eyre::Result<(Self, Vec<Action>)> {
        let bridges: BTreeMap<u64, Address> = cfg.evm.iter().map(|c| (c.chain_id.0, c.bridge)).collect();
        let config = Config {
            batch_max: cfg.signing.batch_max_mints.clamp(1, crate::batch::MAX_BATCH_LEAVES),
            batch_wait_ms: cfg.signing.batch_wait_ms,
            takeover_ms: cfg.signing.takeover_ms,
            stale_after_ms: STALE_AFTER.as_millis() as u64,
            early_for_ms: EARLY_FOR.as_millis() as u64,
            max_early: MAX_EARLY,
            resend_ms: RESEND_EVERY.as_millis() as u64,
            ..Config::new(n, me, bridges.clone())
        };
        let mut state = Persisted::default();
        for rec in crate::records::all_certified(store)? {
            if let Some(r) = btcfi_mint::MintRequest::of(&rec.attestation) {
                state.apply(&Change::Certified(r));
            }
        }
        // A relay record this version cannot read is no reason to stop: at worst its
        // batch is relayed again, and the bridge refuses what it consumed.
        for (event, rec) in crate::records::all_relays(store)? {
            // (A batch's reverted submission is no proof that its mints are on chain.)
            if rec.is_some_and(|r| matches!(r.outcome, RelayOutcome::Mined | RelayOutcome::AlreadyConsumed)) {
                state.apply(&Change::Consumed(event));
            }
        }
        let signed = crate::records::mint_signatures(store)?;
        if signed.is_empty() {
            import_signed_records(store, &bridges, &mut state)?;
        }
        for (message, proposal, signature) in signed {
            state.apply(&Change::Signed { message, proposal, signature });
        }
        let (book, owed) = MintBook::restore(config, &state, now_ms());
        if !state.signed.is_empty() {
            info!(target: "signing", batches = state.signed.len(), owed = owed.len(), "mint book restored");
        }
        Ok((Self { book, key_usable: None, ready: BTreeMap::new(), signed_by: (Vec::new(), 0) }, owed))
    }
}

/// The mints an earlier version signed (its `sig/` records, before `mintsig/`): each
/// batch whose every mint's record is there, with that message, is taken as signed. A
/// mint of any other is batched and signed again, which costs a session but never a
/// second mint: the bridge consumes each event id once.
fn import_signed_records(store: &Store, bridges: &BTreeMap<u64, Address>, state: &mut Persisted) -> eyre::Result<()> {
    let mut by_message: BTreeMap<String, (u64, Vec<Leaf>, SignedRecord)> = BTreeMap::new();
    for (event, rec) in crate::records::all_signed(store)? {
        let mut recipient = [0u8; 20];
        if hex::decode_to_slice(rec.recipient.trim_start_matches("0x"), &mut recipient).is_err() {
            continue;
        }
        let leaf = Leaf { event, recipient: EvmAddress(recipient), amount: Sats(rec.amount_sats) };
        let entry = by_message.entry(rec.message.clone()).or_insert_with(|| (rec.chain_id, Vec::new(), rec.clone()));
        entry.1.push(leaf);
    }
    for (message, (chain, leaves, rec)) in by_message {
        let proposal = BatchProposal::new(chain, leaves);
        let (Some(bridge), Ok(m), Ok(rx), Ok(ry), Ok(z)) =
            (bridges.get(&chain), hex32(&message), hex32(&rec.rx), hex32(&rec.ry), hex32(&rec.z))
        else {
            continue;
        };
        if proposal.message(*bridge) == m {
            let word = alloy::primitives::U256::from_be_bytes;
            let signature = EvmSignature { rx: word(rx), ry: word(ry), z: word(z) };
            state.apply(&Change::Signed { message: m.to_vec(), proposal, signature });
        }
    }
    Ok(())
}

impl Pipeline {
    /// Feeds the mint book one input now and carries out what it says.
    pub(in crate::pipeline) fn mint_input(&mut self, input: Input) -> eyre::Result<()> {
        let actions = self.mints.book.handle(input, now_ms());
        self.mint_actions(actions)
    }

    /// Carries out the mint book's actions, in order. Holding notes go out together at
    /// the end, one message per peer.
    pub(in crate::pipeline) fn mint_actions(&mut self, actions: Vec<Action>) -> eyre::Result<()> {
        let mut holds: Vec<Vec<u8>> = Vec::new();
        for action in actions {
            match action {
                Action::Persist(change) => self.mint_persist(change)?,
                Action::Propose { proposal, proposer } => {
                    if proposer == self.me {
                        info!(target: "signing", chain = proposal.chain, mints = proposal.leaves.len(), root = %hex::encode(proposal.root()), "proposing a batch of mints");
                    }
                    let payload = [&[TAG_BATCH][..], &wire::encode_batch(proposer, &proposal)].concat();
                    self.send_to_peers(&payload);
                }
                Action::Sign { message, proposal } => {
                    let purpose = match proposal.leaves.as_slice() {
                        [one] => Purpose::Mint { event: one.event },
                        _ => Purpose::MintBatch {
                            chain: proposal.chain,
                            root: hex::encode(proposal.root()),
                            mints: proposal.leaves.len(),
                        },
                    };
                    self.start(KeyKind::Evm, message, purpose)?;
                }
                Action::Abandon { message } => {
                    if let Some(suite) = self.evm.as_mut() {
                        suite.abandon(&message);
                    }
                    self.deferred.retain(|(_, m, _)| *m != message);
                }
                Action::Holds { message } => holds.push(message),
                Action::Relay { proposal, signature, after_ms } => self.relay_signed(&proposal, &signature, after_ms),
                Action::Refused { from, refusal } => {
                    debug!(target: "signing", from, reason = %refusal, "batch proposal refused");
                }
                Action::TellSigned { to, signed } => {
                    let payload = [&[TAG_BATCH_SIGNED][..], &wire::encode_signed(&signed)].concat();
                    self.send(to, payload);
                }
            }
        }
        for note in holds.chunks(MAX_HOLDS_PER_NOTE) {
            let payload: Vec<u8> = std::iter::once(TAG_BATCH_READY).chain(note.iter().flatten().copied()).collect();
            self.send_to_peers(&payload);
        }
        Ok(())
    }

    /// Writes what the book persists that is not in the store already: a signed batch,
    /// with each of its mints' records (reorged ones left out), in one write.
    fn mint_persist(&mut self, change: Change) -> eyre::Result<()> {
        let Change::Signed { message, proposal, signature } = change else {
            // Certified: the certified attestation; consumed: the final relay record;
            // reorged (or final again): the stored event. All written already.
            return Ok(());
        };
        let (signers, attempt) = std::mem::take(&mut self.mints.signed_by);
        let root = proposal.root();
        let many = proposal.leaves.len() > 1;
        let mut leaves = Vec::new();
        for (leaf, proof) in proposal.leaves.iter().zip(proposal.proofs()) {
            if self.reorged.contains(&leaf.event) {
                continue;
            }
            let record = SignedRecord {
                chain_id: proposal.chain,
                bridge: self.bridges.get(&proposal.chain).copied().unwrap_or_default().to_string(),
                contract_event_id: word(&leaf.event.contract_id()),
                recipient: format!("0x{}", hex::encode(leaf.recipient.0)),
                amount_sats: leaf.amount.0,
                message: format!("0x{}", hex::encode(&message)),
                rx: word(&signature.rx.to_be_bytes()),
                ry: word(&signature.ry.to_be_bytes()),
                z: word(&signature.z.to_be_bytes()),
                signers: signers.iter().filter_map(|i| self.peers.get(*i)).map(|p| p.to_string()).collect(),
                attempt,
                signed_at_ms: now_ms(),
                batch: many.then(|| BatchRef {
                    root: word(&root),
                    proof: proof.iter().map(word).collect(),
                    leaves: proposal.leaves.len(),
                }),
            };
            leaves.push((leaf.event, record));
        }
        let mut batch = Batch::new();
        crate::records::put_signed_batch(&mut batch, &message, &proposal, &signature, &leaves)?;
        self.store.commit(batch)?;
        for (event, _) in &leaves {
            if let Some(at) = self.finalized_at.remove(event) {
                self.metrics.finality_to_signature.observe(at.elapsed().as_secs_f64());
            }
        }
        info!(target: "signing", chain = proposal.chain, mints = proposal.leaves.len(), root = %hex::encode(root), "batch of mints signed");
        Ok(())
    }

    /// Hands a signed batch to the relayer, to submit `after_ms` from now unless the
    /// bridge consumed its mints by then (mints reorged here are left out; the relayer
    /// checks again before each submission).
    fn relay_signed(&self, proposal: &BatchProposal, signature: &EvmSignature, after_ms: u64) {
        let Some(relay) = &self.relay else { return };
        let sig = MintSignature {
            rx: signature.rx.to_be_bytes(),
            ry: signature.ry.to_be_bytes(),
            z: signature.z.to_be_bytes(),
        };
        let (dest, delay) = (ChainId(proposal.chain), Duration::from_millis(after_ms));
        let job = match proposal.leaves.as_slice() {
            [one] => RelayJob::Mint(MintJob {
                dest,
                request: MintRequest { event: one.event, recipient: one.recipient, amount: one.amount, signature: sig },
                delay,
            }),
            _ => {
                let leaves = proposal
                    .leaves
                    .iter()
                    .zip(proposal.proofs())
                    .filter(|(l, _)| !self.reorged.contains(&l.event))
                    .map(|(l, proof)| BatchLeaf { event: l.event, recipient: l.recipient, amount: l.amount, proof })
                    .collect();
                RelayJob::Batch(BatchJob {
                    dest,
                    request: BatchMintRequest { root: proposal.root(), signature: sig, leaves },
                    delay,
                })
            }
        };
        if relay.try_send(job).is_err() {
            warn!(target: "relay", chain = proposal.chain, root = %hex::encode(proposal.root()), "relay queue full: mints left to other validators");
        }
    }

    /// The `evm` suite signed `message` (a batch, or a single mint).
    pub(in crate::pipeline) fn on_mint_signed(
        &mut self,
        message: &[u8],
        signature: &[u8],
        signers: Vec<usize>,
        attempt: u32,
    ) -> eyre::Result<()> {
        let signature = own_evm_signature(signature)?;
        self.mints.signed_by = (signers, attempt);
        self.mint_input(Input::Signed { message: message.to_vec(), signature })
    }

    /// Tells the book what changed of its gates: the `evm` key's check, and whether
    /// each bridge holds this epoch's key.
    pub(in crate::pipeline) fn tell_mint_gates(&mut self) -> eyre::Result<()> {
        let usable = self.usable.contains(&KeyKind::Evm);
        if self.mints.key_usable != Some(usable) {
            self.mints.key_usable = Some(usable);
            self.mint_input(Input::KeyUsable(usable))?;
        }
        let chains: Vec<u64> = self.bridges.keys().copied().collect();
        for chain in chains {
            let why = self.bridge_not_ready(chain);
            let ready = self.bridge_keys.is_some() && why.is_none();
            let before = self.mints.ready.insert(chain, ready);
            if before != Some(ready) {
                if before == Some(true)
                    && let Some(why) = why
                {
                    warn!(target: "signing", chain, reason = %why, "mints to this bridge held back: it does not hold this epoch's key");
                }
                self.mint_input(Input::DestinationReady { chain, ready })?;
            }
        }
        Ok(())
    }

    /// A peer's batch (`proposer u16 | proposal`).
    pub(in crate::pipeline) fn on_batch(&mut self, from: usize, body: &[u8]) -> eyre::Result<()> {
        match wire::decode_batch(body) {
            Ok((proposer, proposal)) => self.mint_input(Input::Proposal { from, proposer, proposal }),
            Err(e) => {
                warn!(target: "signing", from, error = %e, "undecodable batch proposal dropped");
                Ok(())
            }
        }
    }

    /// Validator `from` holds the batches whose messages `body` lists.
    pub(in crate::pipeline) fn on_batch_ready(&mut self, from: usize, body: &[u8]) -> eyre::Result<()> {
        let Ok(messages) = wire::decode_holds(body) else {
            warn!(target: "signing", from, "undecodable holding note dropped");
            return Ok(());
        };
        for message in messages {
            self.mint_input(Input::Holds { from, message })?;
        }
        Ok(())
    }

    /// Signed batches a peer holds for mints this node proposed (it was away): each
    /// handed to the book only if it verifies here, under this epoch's key, over the
    /// message this node computes for it.
    pub(in crate::pipeline) fn on_signed_batches(&mut self, from: usize, body: &[u8]) -> eyre::Result<()> {
        let signed = match wire::decode_signed(body) {
            Ok(s) => s,
            Err(e) => {
                warn!(target: "signing", from, error = %e, "undecodable signed batches dropped");
                return Ok(());
            }
        };
        let Some((px, py)) = self.evm_xy else { return Ok(()) };
        for (proposal, signature) in signed {
            let Some(bridge) = self.bridges.get(&proposal.chain).copied() else { continue };
            let Ok(message) = <[u8; 32]>::try_from(proposal.message(bridge)) else { continue };
            if btcfi_signer::evm::verify(&message, px, py, &signature).is_err() {
                warn!(target: "signing", from, chain = proposal.chain, "a peer's batch signature does not verify here: dropped");
                continue;
            }
            let first = proposal.leaves.first().map(|l| l.event);
            let known = |b: &MintBook| first.is_some_and(|e| b.is_signed(&e));
            let (before, mints) = (known(&self.mints.book), proposal.leaves.len());
            self.mints.signed_by = (Vec::new(), 0);
            self.mint_input(Input::Learned { proposal, signature })?;
            if !before && known(&self.mints.book) {
                info!(target: "signing", from, mints, "mint signatures learned from a peer (signed while this node was away)");
            }
        }
        Ok(())
    }

    /// The relayer's reports of consumed mints, for the run loop (once).
    pub(crate) fn take_relay_consumed(&mut self) -> Option<mpsc::Receiver<Vec<EventId>>> {
        self.relay_consumed.take()
    }

    /// The relayer found these mints consumed by their bridge (by this node or another).
    pub(crate) fn on_consumed(&mut self, events: Vec<EventId>) -> eyre::Result<()> {
        for event in events {
            self.mint_input(Input::Consumed(event))?;
        }
        Ok(())
    }
}
