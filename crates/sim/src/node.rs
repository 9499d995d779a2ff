//! One simulated validator: the consensus core, the mint book, the release book and
//! FROST signing for both keys (`evm` for mints, `btc` for the vault's Taproot inputs),
//! driven the way the node drives them. What it must keep across a crash lives in
//! [`Disk`], written by the `Persist` actions before anything after them runs;
//! everything else is lost when it crashes.

use crate::signer::{Keys, Out, Signer};
use crate::{Canary, Millis};
use alloy::primitives::Address;
use bitcoin::{ScriptBuf, Transaction, Txid, secp256k1::schnorr};
use btcfi_consensus::{
    Action as CAction, Certificate, Config as CConfig, Consensus, Epoch, Input as CInput, InsecureTestCrypto,
    InsecureTestSigner, Message as CMessage, PersistedState, ValidatorIndex,
};
use btcfi_mint::{
    Action as MAction, BatchProposal, Config as MConfig, Input as MInput, MintBook, MintRequest, Persisted,
};
use btcfi_release::book::{
    Action as RAction, Config as RConfig, Input as RInput, Persisted as RPersisted, ReleaseBook,
};
use btcfi_release::{Payout, Policy, Proposal};
use btcfi_signer::evm::EvmSignature;
use btcfi_signer::frost_secp256k1::Secp256K1Sha256;
use btcfi_signer::frost_secp256k1_tr::Secp256K1Sha256TR;
use btcfi_signer::session::{CommitmentIssued, Message as SMessage, SessionId};
use btcfi_types::{Attestation, AttestationKind, EventId};
use frost_core::Ciphersuite;
use std::collections::{BTreeMap, BTreeSet};

/// The `evm` key's suite (mints).
pub type Suite = Secp256K1Sha256;
/// The `btc` key's suite (the vault's key-path spends).
pub type BtcSuite = Secp256K1Sha256TR;
type Core = Consensus<InsecureTestSigner, InsecureTestCrypto>;

/// The epoch every simulated validator counts votes and signs in.
pub const EPOCH: Epoch = Epoch(1);
/// The signing sessions' attempt timeout.
pub const SIGN_TIMEOUT_MS: Millis = 2_000;
/// A validator's turn to propose releases.
pub const RELEASE_TURN_MS: Millis = 4_000;

/// Bytes on the simulated wire, by channel.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Wire {
    Consensus(Vec<u8>),
    Signing(Vec<u8>),
    Batch(Vec<u8>),
    /// A release proposal.
    Release(Vec<u8>),
    /// A `btc` signing session's message.
    BtcSigning(Vec<u8>),
    /// The sender holds the mint batch of this message.
    Holds(Vec<u8>),
}

impl Wire {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Wire::Consensus(b)
            | Wire::Signing(b)
            | Wire::Batch(b)
            | Wire::Release(b)
            | Wire::BtcSigning(b)
            | Wire::Holds(b) => b,
        }
    }
}

/// What a validator asks of the world.
#[derive(Debug, Clone)]
pub enum Effect {
    Send {
        to: u16,
        wire: Wire,
    },
    Broadcast(Wire),
    /// Submit this signed batch at `at` if a leaf is still unconsumed then.
    Relay {
        at: Millis,
        proposal: BatchProposal,
        signature: EvmSignature,
    },
    /// Ask the adapters to look for this event again.
    Reobserve(EventId),
    /// `sendrawtransaction`.
    BtcBroadcast(Transaction),
    /// Put an unsigned release to the relay policy (`testmempoolaccept`).
    BtcCheck(btcfi_release::Proposal),
}

/// What the checker is told.
#[derive(Debug, Clone)]
pub enum Note {
    Certified {
        attestation: Attestation,
        certificate: Certificate,
    },
    /// A signing session started for this batch.
    Signing {
        proposal: BatchProposal,
    },
    /// This node started signing this release's inputs.
    ReleaseSigning {
        proposal: Proposal,
    },
    /// A commitment left this node.
    Commitment {
        session: SessionId,
        attempt: u32,
        bytes: Vec<u8>,
    },
    Signed {
        message: Vec<u8>,
    },
    Culprit {
        culprit: u16,
    },
    Evidence {
        validator: u16,
    },
    Crashed,
}

/// What survives a crash.
#[derive(Debug, Default, Clone)]
pub struct Disk {
    pub consensus: PersistedState,
    pub mints: Persisted,
    pub releases: RPersisted,
    pub issued: BTreeSet<CommitmentIssued>,
}

/// A release's inputs being signed: one signature per input, in order.
#[derive(Debug, Clone)]
struct Inputs {
    sighashes: Vec<[u8; 32]>,
    signatures: Vec<Option<schnorr::Signature>>,
}

/// One simulated validator.
pub struct Validator {
    pub id: u16,
    n: u16,
    seed: u64,
    canary: Option<Canary>,
    keys: Keys<Suite>,
    btc_keys: Keys<BtcSuite>,
    crypto: InsecureTestCrypto,
    bridges: BTreeMap<u64, Address>,
    policy: Policy,
    pub life: u32,
    core: Option<Core>,
    book: Option<MintBook>,
    releases: Option<ReleaseBook>,
    evm: Option<Signer<Suite>>,
    btc: Option<Signer<BtcSuite>>,
    /// Releases whose inputs are being signed here, and which release each sighash is of.
    inputs: BTreeMap<Txid, Inputs>,
    sighash_of: BTreeMap<[u8; 32], (Txid, usize)>,
    pub disk: Disk,
    /// Crash right after the next durable write, before anything after it runs.
    pub crash_at_persist: bool,
    /// What happened, with the life it happened in.
    pub notes: Vec<(u32, Note)>,
    /// `SIM_DEBUG` set: print signing and batch events to stderr (read once).
    debug: bool,
    pub effects: Vec<Effect>,
    pub releases_signed: u64,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator").field("id", &self.id).field("life", &self.life).finish_non_exhaustive()
    }
}

impl Validator {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u16,
        n: u16,
        seed: u64,
        canary: Option<Canary>,
        keys: Keys<Suite>,
        btc_keys: Keys<BtcSuite>,
        crypto: InsecureTestCrypto,
        bridges: BTreeMap<u64, Address>,
        vault: ScriptBuf,
    ) -> Self {
        Self {
            id,
            n,
            seed,
            canary,
            keys,
            btc_keys,
            crypto,
            bridges,
            policy: crate::bitcoin::policy(vault),
            life: 0,
            core: None,
            book: None,
            releases: None,
            evm: None,
            btc: None,
            inputs: BTreeMap::new(),
            sighash_of: BTreeMap::new(),
            disk: Disk::default(),
            crash_at_persist: false,
            notes: Vec::new(),
            debug: std::env::var_os("SIM_DEBUG").is_some(),
            effects: Vec::new(),
            releases_signed: 0,
        }
    }

    /// Where this validator's mints and releases stand (for a liveness failure's report).
    pub fn describe(&self, events: &[EventId]) -> String {
        let status: Vec<String> =
            events.iter().map(|e| format!("{:?}", self.core.as_ref().map(|c| c.status(e)))).collect();
        let evm = self.evm.as_ref().map(Signer::describe).unwrap_or_default();
        let btc = self.btc.as_ref().map(Signer::describe).unwrap_or_default();
        let live: Vec<String> = self
            .releases
            .as_ref()
            .map(|b| b.live().map(|(t, p, r)| format!("{t}:by{p}:{}payouts", r.payouts.len())).collect())
            .unwrap_or_default();
        format!(
            "v{} up={} life={} consensus={:?} unbatched={} parked={} evm=[{}] btc=[{}] live releases=[{}]",
            self.id,
            self.is_up(),
            self.life,
            status,
            self.book.as_ref().map_or(0, MintBook::unbatched),
            self.evm.as_ref().map_or(0, Signer::parked) + self.btc.as_ref().map_or(0, Signer::parked),
            evm.join(", "),
            btc.join(", "),
            live.join(", ")
        )
    }

    pub fn is_up(&self) -> bool {
        self.core.is_some()
    }

    fn consensus_config(&self) -> CConfig {
        let mut c = CConfig::new(EPOCH, self.n, ValidatorIndex(self.id));
        c.vote_expiry_ms = 120_000;
        c.reobserve_after_ms = 3_000;
        c.rebroadcast_interval_ms = 1_000;
        c.rebroadcast_max_interval_ms = 8_000;
        c.catch_up_after_ms = 4_000;
        c
    }

    fn mint_config(&self) -> MConfig {
        let mut c = MConfig::new(usize::from(self.n), usize::from(self.id), self.bridges.clone());
        c.batch_max = 16;
        c.batch_wait_ms = 500;
        c.takeover_ms = 4_000;
        c.stale_after_ms = 90_000;
        c
    }

    fn release_config(&self) -> RConfig {
        RConfig {
            me: usize::from(self.id),
            n: usize::from(self.n),
            takeover_ms: RELEASE_TURN_MS,
            batch_wait_ms: 1_500,
            batch_max_wait_ms: 15_000,
            bump_after_ms: 12_000,
            respin_after_ms: 20_000,
            expire_after_ms: 25_000,
            resend_every_ms: 10_000,
            policy_checks: true,
            policy: self.policy.clone(),
        }
    }

    /// Starts (or restarts) from what is on disk: nothing the first time.
    pub fn boot(&mut self, now: Millis) {
        let mut core = match Consensus::restore(
            self.consensus_config(),
            self.crypto.signer(ValidatorIndex(self.id)),
            self.crypto.clone(),
            &self.disk.consensus,
        ) {
            Ok(c) => c,
            // The sim's own records always agree: a refusal is a defect the checker
            // reports through liveness (the node stays down).
            Err(_) => return,
        };
        if self.canary == Some(Canary::QuorumOneBelow) {
            core.plant_canary_quorum_one_below();
        }
        let (mut book, owed) = MintBook::restore(self.mint_config(), &self.disk.mints, now);
        if self.canary == Some(Canary::NoOwnObservation) {
            book.set_canary(Some(btcfi_mint::Canary::NoOwnObservation));
        }
        let (mut releases, owed_releases) = ReleaseBook::restore(self.release_config(), &self.disk.releases, now);
        releases.set_canary(match self.canary {
            Some(Canary::IgnoreFeeBand) => Some(btcfi_release::book::Canary::IgnoreFeeBand),
            Some(Canary::PayReorged) => Some(btcfi_release::book::Canary::PayReorged),
            _ => None,
        });
        let reuse = self.canary == Some(Canary::NonceReuseAfterRestart);
        self.evm =
            Some(Signer::new(self.id, self.n, b"evm", self.seed, self.life, reuse, self.keys.clone(), self.debug));
        self.btc =
            Some(Signer::new(self.id, self.n, b"btc", self.seed, self.life, reuse, self.btc_keys.clone(), self.debug));
        // What consensus certified is durable; the books may not have heard of it (a
        // crash right after the write): it is fed again, as the node does at start.
        let certified: Vec<(Attestation, Certificate)> =
            core.certified().map(|(a, c)| (a.clone(), c.clone())).collect();
        self.core = Some(core);
        self.book = Some(book);
        self.releases = Some(releases);
        self.mint_actions(owed, now);
        self.release_actions(owed_releases, now);
        for (attestation, certificate) in certified {
            if !self.is_up() {
                return;
            }
            self.certified(attestation, certificate, now);
        }
    }

    /// Loses everything not on disk.
    pub fn crash(&mut self) {
        self.core = None;
        self.book = None;
        self.releases = None;
        self.evm = None;
        self.btc = None;
        self.inputs.clear();
        self.sighash_of.clear();
        self.crash_at_persist = false;
        self.note(Note::Crashed);
        self.life += 1;
    }

    pub fn observe(&mut self, atts: Vec<Attestation>, now: Millis) {
        self.consensus(CInput::ObservedMany(atts), now);
    }

    pub fn consumed(&mut self, event: EventId, now: Millis) {
        self.mint(MInput::Consumed(event), now);
    }

    /// What this validator's Bitcoin adapter reports (UTXOs and spends at depth, fee
    /// estimates, peg-outs whose burn was reorged past finality).
    pub fn bitcoin(&mut self, input: RInput, now: Millis) {
        self.release(input, now);
    }

    pub fn tick(&mut self, now: Millis) {
        self.consensus(CInput::Tick, now);
        self.mint(MInput::Tick, now);
        self.release(RInput::Tick, now);
        if let Some(s) = self.evm.as_mut() {
            let outs = s.tick(&self.disk.issued, now);
            self.evm_outs(outs, now);
        }
        if let Some(s) = self.btc.as_mut() {
            let outs = s.tick(&self.disk.issued, now);
            self.btc_outs(outs, now);
        }
    }

    pub fn receive(&mut self, from: u16, wire: Wire, now: Millis) -> Result<(), &'static str> {
        if !self.is_up() {
            return Ok(());
        }
        match wire {
            Wire::Consensus(bytes) => {
                let message = CMessage::decode(&bytes).map_err(|_| "consensus message undecodable")?;
                self.consensus(CInput::from_message(ValidatorIndex(from), message), now);
            }
            Wire::Batch(bytes) => {
                let (proposer, proposal) =
                    btcfi_mint::wire::decode_batch(&bytes).map_err(|_| "batch proposal undecodable")?;
                self.mint(MInput::Proposal { from: usize::from(from), proposer, proposal }, now);
            }
            Wire::Holds(message) => {
                if message.len() != 32 {
                    return Err("holds note of another length");
                }
                self.mint(MInput::Holds { from: usize::from(from), message }, now);
            }
            Wire::Release(bytes) => {
                let proposal = Proposal::decode(&bytes).map_err(|_| "release proposal undecodable")?;
                self.release(RInput::Proposal { from: usize::from(from), proposal }, now);
            }
            Wire::Signing(bytes) => {
                let message = SMessage::<Suite>::decode(&bytes).map_err(|_| "signing message undecodable")?;
                if let Some(s) = self.evm.as_mut() {
                    let outs = s.receive(from, message, now);
                    self.evm_outs(outs, now);
                }
            }
            Wire::BtcSigning(bytes) => {
                let message = SMessage::<BtcSuite>::decode(&bytes).map_err(|_| "signing message undecodable")?;
                if let Some(s) = self.btc.as_mut() {
                    let outs = s.receive(from, message, now);
                    self.btc_outs(outs, now);
                }
            }
        }
        Ok(())
    }

    fn note(&mut self, note: Note) {
        self.notes.push((self.life, note));
    }

    fn persisted(&mut self) -> bool {
        if self.crash_at_persist {
            self.crash();
            return true;
        }
        false
    }

    fn consensus(&mut self, input: CInput, now: Millis) {
        let Some(core) = self.core.as_mut() else { return };
        let actions = core.handle(input, now);
        for action in actions {
            if !self.is_up() {
                return;
            }
            match action {
                CAction::Persist(delta) => {
                    self.disk.consensus.apply(&delta);
                    if self.persisted() {
                        return;
                    }
                }
                CAction::Broadcast(m) => self.effects.push(Effect::Broadcast(Wire::Consensus(m.encode()))),
                CAction::SendTo { to, message } => {
                    self.effects.push(Effect::Send { to: to.0, wire: Wire::Consensus(message.encode()) })
                }
                CAction::RequestCertificates(request) => self
                    .effects
                    .push(Effect::Broadcast(Wire::Consensus(CMessage::CertificateRequest(request).encode()))),
                CAction::Certified { attestation, certificate } => self.certified(attestation, certificate, now),
                CAction::Equivocation(e) => self.note(Note::Evidence { validator: e.validator().0 }),
                CAction::Reobserve { event, .. } => self.effects.push(Effect::Reobserve(event)),
                CAction::Alert(_) => {}
            }
        }
    }

    /// Tells the checker, and hands a mint or a peg-out to its book.
    fn certified(&mut self, attestation: Attestation, certificate: Certificate, now: Millis) {
        let request = MintRequest::of(&attestation);
        let payout = match &attestation.kind {
            AttestationKind::PegOut { amount, script_pubkey, .. } => Some(Payout {
                event: attestation.event,
                amount: *amount,
                script: ScriptBuf::from(script_pubkey.clone()),
            }),
            _ => None,
        };
        self.note(Note::Certified { attestation, certificate });
        if let Some(r) = request {
            self.mint(MInput::Certified(r), now);
        }
        if let Some(p) = payout {
            self.release(RInput::Certified(p), now);
        }
    }

    fn mint(&mut self, input: MInput, now: Millis) {
        let Some(book) = self.book.as_mut() else { return };
        let actions = book.handle(input, now);
        self.mint_actions(actions, now);
    }

    fn mint_actions(&mut self, actions: Vec<MAction>, now: Millis) {
        for action in actions {
            if !self.is_up() {
                return;
            }
            match action {
                MAction::Persist(change) => {
                    self.disk.mints.apply(&change);
                    if self.persisted() {
                        return;
                    }
                }
                MAction::Propose { proposal, proposer } => {
                    let bytes = btcfi_mint::wire::encode_batch(proposer, &proposal);
                    self.effects.push(Effect::Broadcast(Wire::Batch(bytes)));
                }
                MAction::Sign { message, proposal } => {
                    let Some(s) = self.evm.as_mut() else { return };
                    if !s.is_running(&message) {
                        self.note(Note::Signing { proposal });
                        let outs = self.evm.as_mut().map(|s| s.start(message, &self.disk.issued, now));
                        self.evm_outs(outs.unwrap_or_default(), now);
                    }
                }
                MAction::Abandon { message } => {
                    if self.debug {
                        eprintln!("t={now} v{} abandons {}", self.id, hex::encode(&message[..4]));
                    }
                    if let Some(s) = self.evm.as_mut() {
                        s.abandon(&message);
                    }
                }
                MAction::Relay { proposal, signature, after_ms } => {
                    self.effects.push(Effect::Relay { at: now + after_ms, proposal, signature })
                }
                MAction::Holds { message } => self.effects.push(Effect::Broadcast(Wire::Holds(message))),
                // A lagging validator is not modelled as learning signatures from its
                // peers: it restores its own state, and the contract's replay
                // protection covers a batch signed again.
                MAction::TellSigned { .. } => {}
                MAction::Refused { from, refusal } => {
                    if self.debug {
                        eprintln!("t={now} v{} refused a batch of v{from}: {refusal}", self.id);
                    }
                }
            }
        }
    }

    fn release(&mut self, input: RInput, now: Millis) {
        let Some(book) = self.releases.as_mut() else { return };
        let actions = book.handle(input, now);
        self.release_actions(actions, now);
    }

    fn release_actions(&mut self, actions: Vec<RAction>, now: Millis) {
        for action in actions {
            if !self.is_up() {
                return;
            }
            match action {
                RAction::Persist(change) => {
                    self.disk.releases.apply(&change);
                    if self.persisted() {
                        return;
                    }
                }
                RAction::Propose(p) => {
                    if self.debug {
                        let ins: Vec<String> = p.tx.input.iter().map(|i| i.previous_output.to_string()).collect();
                        let pays: Vec<String> = p.payouts.iter().map(|e| e.to_string()).collect();
                        eprintln!(
                            "t={now} v{} proposes {} ins={ins:?} pays={pays:?} fee={}",
                            self.id,
                            p.txid(),
                            p.fee()
                        );
                    }
                    self.effects.push(Effect::Broadcast(Wire::Release(p.encode())))
                }
                RAction::Sign { txid, sighashes } => {
                    if self.inputs.contains_key(&txid) {
                        continue;
                    }
                    let proposal = self
                        .releases
                        .as_ref()
                        .and_then(|b| b.live().find(|(t, _, _)| **t == txid).map(|(_, _, p)| p.clone()));
                    if let Some(proposal) = proposal {
                        self.note(Note::ReleaseSigning { proposal });
                    }
                    if self.debug {
                        eprintln!("t={now} v{} signs release {txid} ({} inputs)", self.id, sighashes.len());
                    }
                    for (k, h) in sighashes.iter().enumerate() {
                        self.sighash_of.insert(*h, (txid, k));
                    }
                    let count = sighashes.len();
                    self.inputs.insert(txid, Inputs { sighashes: sighashes.clone(), signatures: vec![None; count] });
                    for h in sighashes {
                        if !self.is_up() {
                            return;
                        }
                        let message = h.to_vec();
                        let outs = self.btc.as_mut().map(|s| s.start(message, &self.disk.issued, now));
                        self.btc_outs(outs.unwrap_or_default(), now);
                    }
                }
                RAction::Abandon { txid } => {
                    if let Some(i) = self.inputs.remove(&txid) {
                        for h in i.sighashes {
                            self.sighash_of.remove(&h);
                            if let Some(s) = self.btc.as_mut() {
                                s.abandon(&h);
                            }
                        }
                    }
                }
                RAction::Broadcast(tx) => self.effects.push(Effect::BtcBroadcast(tx)),
                RAction::Check(p) => self.effects.push(Effect::BtcCheck(p)),
                RAction::Count(c) => {
                    if self.debug {
                        eprintln!("t={now} v{} counts {c:?}", self.id);
                    }
                }
                RAction::Refused { from, txid, error } => {
                    if self.debug {
                        eprintln!("t={now} v{} refused release {txid} of v{from}: {error}", self.id);
                    }
                }
            }
        }
    }

    /// Carries out a signer's outputs in order; stops at a crash.
    fn signer_outs<C: Ciphersuite>(
        &mut self,
        outs: Vec<Out<C>>,
        wire: fn(Vec<u8>) -> Wire,
        now: Millis,
    ) -> Vec<(Vec<u8>, frost_core::Signature<C>)> {
        let mut done = Vec::new();
        for out in outs {
            if !self.is_up() {
                break;
            }
            match out {
                Out::Persist(issued) => {
                    self.disk.issued.insert(issued);
                    if self.persisted() {
                        break;
                    }
                }
                Out::Send { to, bytes } => self.effects.push(Effect::Send { to, wire: wire(bytes) }),
                Out::Broadcast(bytes) => self.effects.push(Effect::Broadcast(wire(bytes))),
                Out::Commitment { session, attempt, bytes } => self.note(Note::Commitment { session, attempt, bytes }),
                Out::Done { message, signature } => {
                    self.note(Note::Signed { message: message.clone() });
                    done.push((message, signature));
                }
                Out::Culprit(culprit) => self.note(Note::Culprit { culprit }),
                Out::Shared { message } => {
                    if let Ok(hash) = <[u8; 32]>::try_from(message.as_slice())
                        && let Some(&(txid, _)) = self.sighash_of.get(&hash)
                    {
                        self.release(RInput::Shared { txid }, now);
                        if !self.is_up() {
                            break;
                        }
                    }
                }
            }
        }
        done
    }

    fn evm_outs(&mut self, outs: Vec<Out<Suite>>, now: Millis) {
        for (message, signature) in self.signer_outs(outs, Wire::Signing, now) {
            if !self.is_up() {
                return;
            }
            if let Ok(signature) = EvmSignature::from_frost(&signature) {
                self.mint(MInput::Signed { message, signature }, now);
            }
        }
    }

    fn btc_outs(&mut self, outs: Vec<Out<BtcSuite>>, now: Millis) {
        for (message, signature) in self.signer_outs(outs, Wire::BtcSigning, now) {
            if !self.is_up() {
                return;
            }
            let Ok(hash) = <[u8; 32]>::try_from(message.as_slice()) else { continue };
            let Some(&(txid, k)) = self.sighash_of.get(&hash) else { continue };
            let Ok(sig) = btcfi_signer::btc::schnorr_signature(&signature) else { continue };
            let Some(inputs) = self.inputs.get_mut(&txid) else { continue };
            if let Some(slot) = inputs.signatures.get_mut(k) {
                *slot = Some(sig);
            }
            if let Some(all) = inputs.signatures.iter().copied().collect::<Option<Vec<_>>>() {
                self.releases_signed += 1;
                self.release(RInput::Signed { txid, signatures: all }, now);
            }
        }
    }
}
